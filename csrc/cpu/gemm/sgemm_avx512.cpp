// The AVX-512 float32 matrix product of sgemm.h. ATen-free; AVX-512 is enabled
// per function (RELU_EXT_SGEMM_TARGET), so this file builds with the
// project's baseline flags and only runs on CPUs the caller checked.
#include "sgemm.h"

#include "kernel_util.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>

// GCC 12's AVX-512 shuffle intrinsics start from _mm512_undefined_ps(), which
// -Wmaybe-uninitialized reports once they are inlined here (a known false
// positive: the undefined lanes are all overwritten).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define RELU_EXT_SGEMM_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2")))

namespace torch_relu_ext::cpu::sgemm {
namespace {

// Register tile: 8 rows x 48 columns = 24 accumulators of 16 floats; each
// step of the reduction loads 3 vectors of B and broadcasts 8 floats of A
// into 24 FMAs (32 vector registers in all). mr = 8 also makes every row
// block start on a mask byte when the caller splits rows by tiles.
constexpr int kMR = 8;
constexpr int kNR = 48;
constexpr int kVecs = kNR / 16;
// Blocks (sized for 48 KiB L1d and 1 MiB L2 per core, docs/cpu_gemm.md): a
// panel of B (kc x nr = 48 KiB) is reused from L1/L2 by every tile of a
// thread's A block (mc x kc = 256 KiB, L2); the packed block of B
// (kc x nc = 3 MiB) is shared by all threads from L3.
constexpr int64_t kKC = 256;
constexpr int64_t kMC = 256;
constexpr int64_t kNC = 3072;
static_assert(kNC % kNR == 0, "a packed block of B is kKC x kNC floats, whole panels");

RELU_EXT_SGEMM_TARGET inline __mmask16 lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// In place: rows r[0..15] of a 16 x 16 block of floats become its columns.
RELU_EXT_SGEMM_TARGET inline void transpose16(__m512 r[16]) {
  __m512i bits[16];
  for (int i = 0; i < 16; ++i) bits[i] = _mm512_castps_si512(r[i]);
  gemm::transpose16(bits);
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(bits[i]);
}

// Panel layout of B: row k of the panel is nr consecutive floats.
RELU_EXT_SGEMM_TARGET void pack_b(View b, int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                                  int64_t p0, int64_t p1, float* dst) {
  for (int64_t p = p0; p < p1; ++p) {
    float* d = dst + p * kc * kNR;
    const int64_t j0 = n0 + p * kNR;
    const int64_t nj = std::min<int64_t>(kNR, n0 + nc - j0);
    if (b.cs == 1) {
      // Rows of B are contiguous: copy nr floats per row.
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = b.p + (k0 + k) * b.rs + j0;
        for (int v = 0; v < kVecs; ++v) {
          _mm512_storeu_ps(d + k * kNR + 16 * v,
                           _mm512_maskz_loadu_ps(lanes(nj - 16 * v), s + 16 * v));
        }
      }
    } else if (b.rs == 1) {
      // Columns of B are contiguous (B = W^T): transpose 16 x 16 blocks.
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t nk = std::min<int64_t>(16, kc - k);
        for (int v = 0; v < kVecs; ++v) {
          __m512 r[16];
          for (int j = 0; j < 16; ++j) {
            const int64_t col = 16 * v + j;
            r[j] = col < nj ? _mm512_maskz_loadu_ps(lanes(nk), b.p + (j0 + col) * b.cs + k0 + k)
                            : _mm512_setzero_ps();
          }
          transpose16(r);
          for (int64_t kk = 0; kk < nk; ++kk) _mm512_storeu_ps(d + (k + kk) * kNR + 16 * v, r[kk]);
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t j = 0; j < kNR; ++j) {
          d[k * kNR + j] = j < nj ? b.p[(k0 + k) * b.rs + (j0 + j) * b.cs] : 0.0f;
        }
      }
    }
  }
}

// Panel layout of A: column k of the panel is mr consecutive floats. Packs
// rows [i0, i0 + mc) (padded with zero rows to a multiple of mr).
RELU_EXT_SGEMM_TARGET void pack_a(View a, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
                                  float* dst) {
  for (int64_t q = 0; q < mc; q += kMR) {
    float* d = dst + q * kc;
    const int64_t ni = std::min<int64_t>(kMR, mc - q);
    if (a.cs == 1) {
      // Rows of A are contiguous: transpose 16 x 16 blocks (8 rows used).
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t nk = std::min<int64_t>(16, kc - k);
        __m512 r[16];
        for (int i = 0; i < 16; ++i) {
          r[i] = i < ni ? _mm512_maskz_loadu_ps(lanes(nk), a.p + (i0 + q + i) * a.rs + k0 + k)
                        : _mm512_setzero_ps();
        }
        transpose16(r);
        for (int64_t kk = 0; kk < nk; ++kk) {
          _mm256_storeu_ps(d + (k + kk) * kMR, _mm512_castps512_ps256(r[kk]));
        }
      }
    } else if (a.rs == 1) {
      // Columns of A are contiguous (A = G^T): copy mr floats per column.
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = a.p + (k0 + k) * a.cs + i0 + q;
        _mm256_storeu_ps(d + k * kMR, _mm256_maskz_loadu_ps(__mmask8(lanes(ni)), s));
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t i = 0; i < kMR; ++i) {
          d[k * kMR + i] = i < ni ? a.p[(i0 + q + i) * a.rs + (k0 + k) * a.cs] : 0.0f;
        }
      }
    }
  }
}

// OR `n` bits (LSB first) into the mask starting at bit position `bit`.
inline void or_bits(uint8_t* mask, int64_t bit, uint64_t bits, int n) {
  uint8_t* m = mask + (bit >> 3);
  const int s = static_cast<int>(bit & 7);
  const uint64_t v = bits << s;  // n <= 48, so s + n <= 55 bits
  const int nbytes = (s + n + 7) / 8;
  for (int i = 0; i < nbytes; ++i) m[i] |= static_cast<uint8_t>(v >> (8 * i));
}

// One tile of mr x 16 V columns (V <= 3 vectors; a panel's last, narrower
// columns take a narrower tile: N = 64 would otherwise spend a third of its
// work on padding): c[0:mr_valid, 0:nr_valid] (= | +=) a_panel x b_panel,
// then the epilogue when ep is given (row0/col0: the tile's place in C).
template <int V>
RELU_EXT_SGEMM_TARGET void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                int64_t mr_valid, int64_t nr_valid, bool accumulate,
                                const Epilogue* ep, int64_t row0, int64_t col0) {
  __m512 acc[kMR][V];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[V];
    for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + k * kNR + 16 * v);
    const float* ak = a + k * kMR;
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(ak[i]);
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
  }

  __mmask16 vm[V];
  for (int v = 0; v < V; ++v) vm[v] = lanes(nr_valid - 16 * v);
  __m512 bias[V];
  const bool add_bias = ep != nullptr && ep->bias != nullptr;
  for (int v = 0; v < V; ++v) {
    bias[v] =
        add_bias ? _mm512_maskz_loadu_ps(vm[v], ep->bias + col0 + 16 * v) : _mm512_setzero_ps();
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < kMR; ++i) {
    if (i >= mr_valid) break;
    float* ci = c + i * ldc;
    uint64_t bits = 0;
    for (int v = 0; v < V; ++v) {
      __m512 y = acc[i][v];
      if (accumulate) y = _mm512_add_ps(_mm512_maskz_loadu_ps(vm[v], ci + 16 * v), y);
      if (add_bias) y = _mm512_add_ps(y, bias[v]);
      if (ep != nullptr && ep->relu) {
        // As csrc/core/relu_math.h: the mask bit is "not <= 0" (positive or
        // NaN), the output y < 0 ? 0 : y (NaN and -0.0 kept, as torch.relu).
        const __mmask16 pass = _mm512_cmp_ps_mask(y, zero, _CMP_NLE_UQ) & vm[v];
        y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_LT_OQ), zero);
        bits |= static_cast<uint64_t>(pass) << (16 * v);
      }
      _mm512_mask_storeu_ps(ci + 16 * v, vm[v], y);
    }
    if (ep != nullptr && ep->relu && ep->mask != nullptr) {
      or_bits(ep->mask, (row0 + i) * ep->mask_ld + col0, bits, static_cast<int>(nr_valid));
    }
  }
}

RELU_EXT_SGEMM_TARGET void block(View a, int64_t m0, int64_t m1, int64_t k0, int64_t kc,
                                 const float* packed_b, int64_t n0, int64_t nc, float* c,
                                 int64_t ldc, bool accumulate, const Epilogue* ep,
                                 float* a_scratch) {
  const int64_t panels = (nc + kNR - 1) / kNR;
  for (int64_t i0 = m0; i0 < m1; i0 += kMC) {
    const int64_t mc = std::min(kMC, m1 - i0);
    pack_a(a, i0, mc, k0, kc, a_scratch);
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t j0 = n0 + p * kNR;
      const int64_t nr_valid = std::min<int64_t>(kNR, n0 + nc - j0);
      const float* bp = packed_b + p * kc * kNR;
      const auto tile_v = nr_valid > 32 ? &tile<3> : nr_valid > 16 ? &tile<2> : &tile<1>;
      for (int64_t q = 0; q < mc; q += kMR) {
        tile_v(kc, a_scratch + q * kc, bp, c + (i0 + q) * ldc + j0, ldc,
               std::min<int64_t>(kMR, mc - q), nr_valid, accumulate, ep, i0 + q, j0);
      }
    }
  }
}

}  // namespace

const Kernels* avx512() {
  static const Kernels k{kMR, kNR, kKC, kMC, kNC, kKC * kNC, kMC * kKC, &pack_b, &block};
  return &k;
}

}  // namespace torch_relu_ext::cpu::sgemm

#else

namespace torch_relu_ext::cpu::sgemm {
const Kernels* avx512() { return nullptr; }
}  // namespace torch_relu_ext::cpu::sgemm

#endif
