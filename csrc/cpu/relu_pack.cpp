// CPU kernels of relu_ext::relu_pack / relu_unpack: lossless storage of a
// mostly-zero tensor as 1 bit per element (bit pattern != 0) plus the packed
// non-zero elements. Bits, not values, are compared: -0.0, NaN payloads and
// denormals come back exactly. Used by compress_relu_activations() for the
// ReLU outputs that a later layer keeps for backward.
//
// Work is split into fixed chunks so both passes run in parallel: pass 1
// writes the bits and counts each chunk, a prefix sum gives every chunk its
// place in `values`, pass 2 copies the non-zeros there (branch-free).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <vector>

namespace torch_relu_ext::cpu {
namespace {

using at::Tensor;

constexpr int64_t kChunk = int64_t{1} << 16;  // elements per chunk (multiple of 64)

int64_t bits_bytes(int64_t n) { return (n + 7) / 8; }

bool is_packable(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Index of the last set bit in [start, end) of `bits` (start is a multiple of
// 8), or -1 if none.
int64_t last_set_bit(const uint8_t* bits, int64_t start, int64_t end) {
  for (int64_t byte = (end - 1) / 8; byte >= start / 8; --byte) {
    unsigned b = bits[byte];
    if (byte * 8 + 8 > end) b &= (1u << (end - byte * 8)) - 1u;
    if (b != 0) return byte * 8 + (31 - __builtin_clz(b));
  }
  return -1;
}

int64_t popcount_bytes(const uint8_t* bits, int64_t begin, int64_t end) {
  int64_t count = 0;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    uint64_t w;
    std::memcpy(&w, bits + i, 8);
    count += __builtin_popcountll(w);
  }
  for (; i < end; ++i) count += __builtin_popcount(bits[i]);
  return count;
}

// AVX-512 versions of the three inner loops (compress/expand instructions do
// the packing); the portable loops below handle other CPUs and the tails.
// Only float32 (32-bit) and bfloat16/float16 (16-bit, needs VBMI2) have them.
#if defined(__x86_64__) && defined(__GNUC__)
#define RELU_PACK_AVX512 1
#define RELU_PACK_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi2,popcnt")))

bool cpu_has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vbmi2");
  return ok;
}

// Each returns the index it stopped at (a multiple of the vector width from
// start); *count / *k advance by the elements handled. U is uint32_t
// (float32) or uint16_t (16-bit types): one 64-byte vector holds L elements,
// whose mask is an L-bit integer M.
template <typename U>
struct Lanes {
  static constexpr int64_t L = 64 / sizeof(U);
  using M = std::conditional_t<sizeof(U) == 4, __mmask16, __mmask32>;
};

template <typename U>
RELU_PACK_TARGET int64_t bits_avx512(const U* src, int64_t start, int64_t end, uint8_t* bits,
                                     int64_t* count) {
  using M = typename Lanes<U>::M;
  constexpr int64_t L = Lanes<U>::L;
  int64_t i = start;
  for (; i + L <= end; i += L) {
    const __m512i v = _mm512_loadu_si512(src + i);
    M m;
    if constexpr (sizeof(U) == 4) {
      m = _mm512_test_epi32_mask(v, v);
    } else {
      m = _mm512_test_epi16_mask(v, v);
    }
    std::memcpy(bits + i / 8, &m, sizeof(M));
    *count += __builtin_popcount(m);
  }
  return i;
}
template <typename U>
RELU_PACK_TARGET int64_t compact_avx512(const U* src, const uint8_t* bits, int64_t start,
                                        int64_t end, U* dst, int64_t* k) {
  using M = typename Lanes<U>::M;
  constexpr int64_t L = Lanes<U>::L;
  int64_t i = start;
  for (; i + L <= end; i += L) {
    M m;
    std::memcpy(&m, bits + i / 8, sizeof(M));
    if constexpr (sizeof(U) == 4) {
      _mm512_mask_compressstoreu_epi32(dst + *k, m, _mm512_loadu_si512(src + i));
    } else {
      _mm512_mask_compressstoreu_epi16(dst + *k, m, _mm512_loadu_si512(src + i));
    }
    *k += __builtin_popcount(m);
  }
  return i;
}
template <typename U>
RELU_PACK_TARGET int64_t expand_avx512(const uint8_t* bits, const U* vals, int64_t start,
                                       int64_t end, U* dst, int64_t* k) {
  using M = typename Lanes<U>::M;
  constexpr int64_t L = Lanes<U>::L;
  int64_t i = start;
  for (; i + L <= end; i += L) {
    M m;
    std::memcpy(&m, bits + i / 8, sizeof(M));
    if constexpr (sizeof(U) == 4) {
      _mm512_storeu_si512(dst + i, _mm512_maskz_expandloadu_epi32(m, vals + *k));
    } else {
      _mm512_storeu_si512(dst + i, _mm512_maskz_expandloadu_epi16(m, vals + *k));
    }
    *k += __builtin_popcount(m);
  }
  return i;
}
#endif

template <typename U>
constexpr bool kHasAvx512Path = sizeof(U) == 2 || sizeof(U) == 4;

// Exclusive prefix sums of per-chunk counts; returns the total.
int64_t prefix(std::vector<int64_t>& counts) {
  int64_t total = 0;
  for (auto& c : counts) {
    const int64_t here = c;
    c = total;
    total += here;
  }
  return total;
}

template <typename U>
std::tuple<Tensor, Tensor> pack_impl(const Tensor& src_t) {
  const int64_t n = src_t.numel();
  const U* src = reinterpret_cast<const U*>(src_t.const_data_ptr());
  Tensor bits_t = at::empty({bits_bytes(n)}, src_t.options().dtype(at::kByte));
  uint8_t* bits = bits_t.data_ptr<uint8_t>();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> offs(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t start = c * kChunk, end = std::min(n, start + kChunk);
      int64_t count = 0;
      int64_t i = start;
#ifdef RELU_PACK_AVX512
      if constexpr (kHasAvx512Path<U>) {
        if (cpu_has_avx512()) i = bits_avx512(src, start, end, bits, &count);
      }
#endif
      for (; i < end; i += 8) {
        const int64_t m = std::min<int64_t>(8, end - i);
        unsigned byte = 0;
        for (int64_t j = 0; j < m; ++j) byte |= static_cast<unsigned>(src[i + j] != 0) << j;
        bits[i / 8] = static_cast<uint8_t>(byte);
        count += __builtin_popcount(byte);
      }
      offs[c] = count;
    }
  });
  const int64_t total = prefix(offs);
  Tensor values_t = at::empty({total}, src_t.options());
  U* dst = reinterpret_cast<U*>(values_t.data_ptr());
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t start = c * kChunk, end = std::min(n, start + kChunk);
      // Up to the chunk's last non-zero, every store lands inside the chunk's
      // own slice of `values` (a zero's store is overwritten by the next one).
      int64_t k = offs[c];
      int64_t i = start;
#ifdef RELU_PACK_AVX512
      if constexpr (kHasAvx512Path<U>) {
        if (cpu_has_avx512()) i = compact_avx512(src, bits, start, end, dst, &k);
      }
#endif
      const int64_t last = last_set_bit(bits, start, end);
      for (; i <= last; ++i) {
        const U v = src[i];
        dst[k] = v;
        k += v != 0;
      }
    }
  });
  return {bits_t, values_t};
}

template <typename U>
void unpack_impl(const uint8_t* bits, const U* vals, U* dst, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> offs(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t start = c * kChunk, end = std::min(n, start + kChunk);
      offs[c] = popcount_bytes(bits, start / 8, bits_bytes(end));
    }
  });
  prefix(offs);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t start = c * kChunk, end = std::min(n, start + kChunk);
      // Up to the chunk's last set bit, vals[k] is always in range.
      int64_t k = offs[c];
      int64_t i = start;
#ifdef RELU_PACK_AVX512
      if constexpr (kHasAvx512Path<U>) {
        if (cpu_has_avx512()) i = expand_avx512(bits, vals, start, end, dst, &k);
      }
#endif
      const int64_t last = last_set_bit(bits, start, end);
      for (; i <= last; ++i) {
        const U bit = (bits[i >> 3] >> (i & 7)) & 1;
        dst[i] = vals[k] & static_cast<U>(U(0) - bit);
        k += bit;
      }
      const int64_t zeros_from = std::max(i, last + 1);
      std::memset(dst + zeros_from, 0, sizeof(U) * (end - zeros_from));
    }
  });
}

std::tuple<Tensor, Tensor> relu_pack_cpu(const Tensor& self) {
  TORCH_CHECK(self.layout() == at::kStrided && is_packable(self.scalar_type()),
              "relu_ext::relu_pack: expected argument 'self' to be a dense floating-point tensor "
              "(float32, float64, bfloat16 or float16), but got ",
              self.scalar_type(), " with layout ", self.layout());
  const Tensor src = self.contiguous();
  switch (src.element_size()) {
    case 2:
      return pack_impl<uint16_t>(src);
    case 4:
      return pack_impl<uint32_t>(src);
    default:
      return pack_impl<uint64_t>(src);
  }
}

Tensor relu_unpack_cpu(const Tensor& bits, const Tensor& values, c10::SymIntArrayRef sym_size) {
  const auto size = C10_AS_INTARRAYREF_SLOW(sym_size);
  int64_t n = 1;
  for (const int64_t s : size) {
    TORCH_CHECK(s >= 0, "relu_ext::relu_unpack: expected non-negative sizes, but got ", size);
    n *= s;
  }
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.dim() == 1 && bits.is_contiguous() &&
                  bits.size(0) == bits_bytes(n),
              "relu_ext::relu_unpack: expected argument 'bits' to be a contiguous uint8 tensor of "
              "shape (",
              bits_bytes(n), ",) for size ", size, ", but got ", bits.scalar_type(), " of shape ",
              bits.sizes());
  TORCH_CHECK(values.layout() == at::kStrided && is_packable(values.scalar_type()) &&
                  values.dim() == 1 && values.is_contiguous(),
              "relu_ext::relu_unpack: expected argument 'values' to be a contiguous 1-D "
              "floating-point tensor, but got ",
              values.scalar_type(), " of shape ", values.sizes());
  const uint8_t* b = bits.const_data_ptr<uint8_t>();
  const int64_t ones =
      popcount_bytes(b, 0, bits.size(0)) - (n % 8 ? __builtin_popcount(b[n / 8] >> (n % 8)) : 0);
  TORCH_CHECK(ones == values.size(0), "relu_ext::relu_unpack: 'bits' has ", ones,
              " set bits but 'values' has ", values.size(0), " elements");
  Tensor out = at::empty(size, values.options());
  switch (values.element_size()) {
    case 2:
      unpack_impl(b, reinterpret_cast<const uint16_t*>(values.const_data_ptr()),
                  reinterpret_cast<uint16_t*>(out.data_ptr()), n);
      break;
    case 4:
      unpack_impl(b, reinterpret_cast<const uint32_t*>(values.const_data_ptr()),
                  reinterpret_cast<uint32_t*>(out.data_ptr()), n);
      break;
    default:
      unpack_impl(b, reinterpret_cast<const uint64_t*>(values.const_data_ptr()),
                  reinterpret_cast<uint64_t*>(out.data_ptr()), n);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CPU, m) {
  m.impl("relu_pack", &relu_pack_cpu);
  m.impl("relu_unpack", &relu_unpack_cpu);
}

}  // namespace torch_relu_ext::cpu
