// The AMX bfloat16 forward of amx_bf16.h. ATen-free; AMX and AVX-512 are
// enabled per function (RELU_EXT_AMX_TARGET), so this file builds with the
// project's baseline flags and only runs where available() said yes.
#include "amx_bf16.h"

#include "kernel_util.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

// AMX intrinsics need GCC 11 or clang 12 (and an assembler that knows the
// instructions); older compilers build the stub below (amx never runs).
#if defined(__clang__)
#define RELU_EXT_AMX_COMPILER (__clang_major__ >= 12)
#elif defined(__GNUC__)
#define RELU_EXT_AMX_COMPILER (__GNUC__ >= 11)
#else
#define RELU_EXT_AMX_COMPILER 0
#endif
#if defined(__x86_64__) && defined(__linux__) && RELU_EXT_AMX_COMPILER
#define RELU_EXT_AMX_BUILT 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

// GCC 12's AVX-512 shuffle intrinsics start from an undefined vector, which
// -Wmaybe-uninitialized reports once they are inlined (a known false
// positive, as in sgemm_avx512.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace torch_relu_ext::cpu::amx {

#if RELU_EXT_AMX_BUILT

#define RELU_EXT_AMX_TARGET                                                     \
  __attribute__((                                                               \
      target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16," \
             "prfchw")))

namespace {

using gemm::Scratch;
using gemm::transpose16;

// Blocks (measured on a 2-core Xeon with AMX, docs/cpu_gemm.md): 256 rows of
// x per step (a 256 x 256 block of it, 128 KiB, stays in L2), 128 output
// columns (4 panels) accumulated in a 144 KiB buffer, reductions of 256 (a
// panel's 256 rows, 16 KiB, stay in L1 while the row blocks pass).
constexpr int64_t kMC = 256;
// Where the packed weight has at most 1 MiB (it stays in L2 while rows
// pass), row blocks of 32 instead: each block's output rows are written
// whole and in order, and its accumulators stay in L1 (docs/cpu_gemm.md:
// 0.73-0.95x the time on output-bound and mid-size forwards).
constexpr int64_t kSmallWeightBytes = int64_t{1} << 20;
constexpr int64_t kNC = 128;
constexpr int64_t kKC = 256;
constexpr int64_t kTile = kRows;  // rows and columns of a block of 4 accumulator tiles
static_assert(kTile == kPanel, "a block of 4 tiles is one panel wide");
// Row stride of the accumulator buffer: 16 floats more than its columns, so
// that rows 4 KiB apart do not share L1 sets.
constexpr int64_t kLdc = kNC + 16;
constexpr int64_t kAhead = 4;

// The tile configuration (palette 1): tiles 0-3 accumulate a 32 x 32 float
// block, 4-5 hold 32 rows x 32 bfloat16 of x, 6-7 16 column pairs x 32 of W.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

RELU_EXT_AMX_TARGET void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// c (32 x 32 floats, row stride ldc) = (or += when accumulate) a (32 rows,
// row stride lda, columns [0, kc)) @ a panel's rows [0, kc / 2); kc is a
// multiple of 32.
RELU_EXT_AMX_TARGET inline void block_product(const uint16_t* a, int64_t lda, const uint16_t* b,
                                              int64_t kc, float* c, int64_t ldc, bool accumulate) {
  const int64_t kCStride = ldc * static_cast<int64_t>(sizeof(float));
  constexpr int kBStride = kPanel * 2 * sizeof(uint16_t);
  if (accumulate) {
    _tile_loadd(0, c, kCStride);
    _tile_loadd(1, c + 16, kCStride);
    _tile_loadd(2, c + 16 * ldc, kCStride);
    _tile_loadd(3, c + 16 * ldc + 16, kCStride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t a_stride = lda * static_cast<int64_t>(sizeof(uint16_t));
  for (int64_t k = 0; k < kc; k += 32) {
    _tile_loadd(4, a + k, a_stride);
    _tile_loadd(5, a + 16 * lda + k, a_stride);
    _tile_loadd(6, b + k * kPanel, kBStride);
    _tile_loadd(7, b + k * kPanel + 32, kBStride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, kCStride);
  _tile_stored(1, c + 16, kCStride);
  _tile_stored(2, c + 16 * ldc, kCStride);
  _tile_stored(3, c + 16 * ldc + 16, kCStride);
}

// ORs `len` (<= 32) bits into the zeroed mask at bit e.
inline void or_bits(uint8_t* mask, int64_t e, uint32_t bits, int64_t len) {
  const int shift = static_cast<int>(e & 7);
  const uint64_t v = static_cast<uint64_t>(bits) << shift;
  uint8_t* p = mask + (e >> 3);
  const int64_t bytes = (shift + len + 7) / 8;
  for (int64_t i = 0; i < bytes; ++i) p[i] |= static_cast<uint8_t>(v >> (8 * i));
}

// The epilogue of a finished rows x cols block of c (row stride ldc, cols
// <= kNC), row by row: + bias, rounded to bfloat16 by vcvtne2ps2bf16 (to
// nearest even; NaN -> 0x7FC0; float subnormals become zeros of their sign,
// as oneDNN's bfloat16 products give them), then ReLU on the rounded
// value as torch.relu (negative non-NaN -> +0; -0.0 and NaN kept) -> out
// (row stride n), and the mask bits (rounded value not <= 0: positive or
// NaN) of row `row0` on, column col0 on. On the 16-bit patterns as signed
// integers: the mask is [-127, -1] (NaN with the sign set) or [1, 32767]
// (positive, +Inf, NaN); ReLU zeroes [0x8001, 0xFF80] (negative, -Inf).
// Each row's output and mask bits are written in one run (stores of 64
// bytes scattered over rows queued behind each other's cache misses).
template <bool kMask>
RELU_EXT_AMX_TARGET void finish_rows(const float* c, int64_t ldc, const float* bias, int64_t rows,
                                     int64_t cols, uint16_t* out, int64_t n, uint8_t* mask,
                                     int64_t row0, int64_t col0) {
  const __m512i first_negative = _mm512_set1_epi16(static_cast<int16_t>(0x8001));
  const __m512i negative_span = _mm512_set1_epi16(0x7F7F);
  const __m512i lowest_pass = _mm512_set1_epi16(-127);
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF);
  const __m512i infinity = _mm512_set1_epi16(0x7F80);
  const __m512i quiet_nan = _mm512_set1_epi16(0x7FC0);
  const bool whole_bytes = n % 8 == 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (i + kAhead < rows) {
      for (int64_t j = 0; j < cols; j += 32) __builtin_prefetch(out + (i + kAhead) * n + j, 1, 3);
      if (kMask) __builtin_prefetch(mask + ((row0 + i + kAhead) * n + col0) / 8, 1, 3);
    }
    const int64_t e = (row0 + i) * n + col0;  // the row's first mask bit
    for (int64_t j = 0; j < cols; j += 32) {
      const __m512 v0 =
          _mm512_add_ps(_mm512_load_ps(c + i * ldc + j),
                        bias != nullptr ? _mm512_load_ps(bias + j) : _mm512_setzero_ps());
      const __m512 v1 =
          _mm512_add_ps(_mm512_load_ps(c + i * ldc + j + 16),
                        bias != nullptr ? _mm512_load_ps(bias + j + 16) : _mm512_setzero_ps());
      __m512i y = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v1, v0));
      // Every NaN as 0x7FC0: with NaN in both the sum and the bias, vaddps
      // returns one operand's NaN, which the two instantiations of this
      // function (with and without the mask) may order differently.
      y = _mm512_mask_mov_epi16(
          y, _mm512_cmpgt_epu16_mask(_mm512_and_si512(y, magnitude), infinity), quiet_nan);
      const __mmask32 negative =
          _mm512_cmple_epu16_mask(_mm512_sub_epi16(y, first_negative), negative_span);
      const int64_t len = std::min<int64_t>(32, cols - j);
      const __mmask32 lanes = len == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << len) - 1u);
      _mm512_mask_storeu_epi16(out + i * n + j, lanes, _mm512_maskz_mov_epi16(~negative, y));
      if constexpr (kMask) {
        const uint32_t bits =
            _mm512_cmpge_epi16_mask(y, lowest_pass) & _mm512_test_epi16_mask(y, y) & lanes;
        // Stored as it is made: a wider reload of narrower stores would
        // miss store forwarding (measured: most of this function's time).
        if (whole_bytes && len == 32) {
          std::memcpy(mask + (e + j) / 8, &bits, 4);
        } else if (whole_bytes) {
          std::memcpy(mask + (e + j) / 8, &bits, static_cast<size_t>((len + 7) / 8));
        } else {
          or_bits(mask, e + j, bits, len);
        }
      }
    }
  }
}

// k rounded up to whole tile steps (32): the packed panels' and copied rows'
// reduction length, zero beyond k.
int64_t padded_k(int64_t k) { return (k + 31) / 32 * 32; }

}  // namespace

bool available() {
  static const bool ok = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl") ||
        !__builtin_cpu_supports("avx512bf16")) {
      return false;
    }
    unsigned a = 7, b = 0, c = 0, d = 0;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
    if (!amx_bf16 || !amx_tile) return false;
    // Linux hands out tile state only on request (ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); granted for the whole process.
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return ok;
}

int64_t packed_elems(int64_t n, int64_t k) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
  return panels * padded_k(k) * kPanel;
}

RELU_EXT_AMX_TARGET void pack_weight(const uint16_t* w, int64_t ldw, int64_t n, int64_t k,
                                     int64_t p0, int64_t p1, uint16_t* packed) {
  const int64_t pairs = k / 2, kpad_pairs = padded_k(k) / 2;
  for (int64_t p = p0; p < p1; ++p) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(packed + p * kpad_pairs * 2 * kPanel);
    for (int64_t j0 = 0; j0 < kPanel; j0 += 16) {
      for (int64_t q0 = 0; q0 < kpad_pairs; q0 += 16) {
        const int64_t len = std::max<int64_t>(0, std::min<int64_t>(16, pairs - q0));
        const auto lanes = static_cast<__mmask16>((1u << len) - 1u);
        __m512i r[16];
        for (int i = 0; i < 16; ++i) {
          const int64_t col = p * kPanel + j0 + i;
          r[i] = col < n && len > 0 ? _mm512_maskz_loadu_epi32(lanes, w + col * ldw + 2 * q0)
                                    : _mm512_setzero_si512();
        }
        transpose16(r);
        for (int i = 0; i < 16; ++i) _mm512_store_si512(dst + (q0 + i) * kPanel + j0, r[i]);
      }
    }
    if (k % 2 != 0) {  // the last pair: W[j][k - 1] and a zero
      for (int64_t j = 0; j < kPanel; ++j) {
        const int64_t col = p * kPanel + j;
        dst[pairs * kPanel + j] = col < n ? w[col * ldw + k - 1] : 0;
      }
    }
  }
}

RELU_EXT_AMX_TARGET void forward_rows(const uint16_t* x, int64_t ldx, int64_t r0, int64_t r1,
                                      int64_t n, int64_t k, const uint16_t* packed,
                                      const float* bias, uint16_t* out, uint8_t* mask) {
  if (r0 >= r1) return;
  const int64_t kpad = padded_k(k), panels = (n + kPanel - 1) / kPanel;
  // Rows of x are read in place when whole tiles of them exist; otherwise a
  // block is copied, zero-padded, with a row stride of an odd number of
  // cache lines (a power of two would map a tile's rows onto few L1 sets).
  const int64_t lda_copy = (kpad / 32) % 2 == 1 ? kpad : kpad + 32;
  thread_local Scratch<float> c_buf;
  thread_local Scratch<uint16_t> a_buf;
  // Buffers are taken before the tiles are configured: nothing throws while they are held.
  float* cb = c_buf.get(kMC * kLdc);
  const bool copies = k % 32 != 0 || (r1 - r0) % kTile != 0;  // row blocks start at multiples of 32
  uint16_t* ab = copies ? a_buf.get(kMC * lda_copy) : nullptr;
  if (mask != nullptr && n % 8 != 0) {  // bits are OR'ed in (finish_rows)
    const int64_t b0 = r0 * n / 8, b1 = (r1 * n + 7) / 8;
    std::memset(mask + b0, 0, static_cast<size_t>(b1 - b0));
  }
  const auto finish = mask != nullptr ? &finish_rows<true> : &finish_rows<false>;
  configure_tiles();
  const int64_t mc = packed_elems(n, k) * 2 <= kSmallWeightBytes ? kTile : kMC;
  for (int64_t rc = r0; rc < r1; rc += mc) {
    const int64_t rows = std::min(mc, r1 - rc), tiles = (rows + kTile - 1) / kTile;
    const uint16_t* a = x + rc * ldx;
    int64_t lda = ldx;
    if (k % 32 != 0 || rows % kTile != 0) {
      for (int64_t i = 0; i < tiles * kTile; ++i) {
        uint16_t* row = ab + i * lda_copy;
        const int64_t kept = i < rows ? k : 0;
        if (kept > 0) std::memcpy(row, a + i * ldx, static_cast<size_t>(k) * sizeof(uint16_t));
        std::memset(row + kept, 0, static_cast<size_t>(kpad - kept) * sizeof(uint16_t));
      }
      a = ab;
      lda = lda_copy;
    }
    for (int64_t q0 = 0; q0 < panels; q0 += kNC / kPanel) {
      const int64_t q1 = std::min(panels, q0 + kNC / kPanel);
      for (int64_t k0 = 0; k0 < kpad; k0 += kKC) {
        const int64_t kc = std::min(kKC, kpad - k0);
        for (int64_t q = q0; q < q1; ++q) {
          const uint16_t* panel = packed + (q * kpad + k0) * kPanel;
          for (int64_t t = 0; t < tiles; ++t) {
            block_product(a + t * kTile * lda + k0, lda, panel, kc,
                          cb + t * kTile * kLdc + (q - q0) * kPanel, kLdc, k0 > 0);
          }
        }
      }
      const int64_t col = q0 * kPanel, cols = std::min(n, q1 * kPanel) - col;
      finish(cb, kLdc, bias != nullptr ? bias + col : nullptr, rows, cols, out + rc * n + col, n,
             mask, rc, col);
    }
  }
  _tile_release();
}

#else  // not x86-64 Linux, or a compiler without AMX intrinsics: never available

bool available() { return false; }
int64_t packed_elems(int64_t, int64_t) { return 0; }
void pack_weight(const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t, uint16_t*) {}
void forward_rows(const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t, const uint16_t*,
                  const float*, uint16_t*, uint8_t*) {}

#endif

}  // namespace torch_relu_ext::cpu::amx
