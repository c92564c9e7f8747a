// CPU inner loops of fused_linear_relu, free of ATen: they see raw pointers to
// contiguous row blocks, so they compile fast and are built once per
// instruction set (isa_build.h); their table is fused_linear_relu_kernel.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../core/relu_mask.h"
#include "../core/relu_math.h"
#include "fused_linear_relu_kernel.h"
#include "isa_build.h"

// Each operator's loops have a namespace of their own inside the build's
// namespace: every loop header meets the others in each isa_*.cpp file.
namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA::fused_linear_relu_loops {

// Elements handled per mask-packing step; a multiple of 8 so every step starts
// on a mask byte boundary.
constexpr int64_t kMaskChunk = 1024;

// Packs len 0/1 flags (flags has room for len rounded up to 8) into
// ceil(len / 8) mask bytes at `bytes`, LSB first; the last byte's unused
// bits are 0.
RELU_EXT_CPU_TARGET inline void pack_flags(uint8_t* flags, int64_t len, uint8_t* bytes) {
  const int64_t nbytes = (len + 7) / 8;
  for (int64_t i = len; i < nbytes * 8; ++i) flags[i] = 0;
  for (int64_t k = 0; k < nbytes; ++k) bytes[k] = core::pack8(flags + 8 * k);
}

// On a contiguous (rows, cols) block `in` that holds x @ W.T: adds the bias
// (may be null), applies ReLU into `out` (may be `in`: in place) and, when
// kWithMask, writes the block's mask bits starting at `mask` (the block must
// start on a mask byte boundary, i.e. its first flat element index is a
// multiple of 8). Acc is the arithmetic type (float for the 16-bit types).
template <typename T, typename Acc, bool kWithMask>
RELU_EXT_CPU_TARGET void bias_relu_mask_block(const T* in, T* out, const T* bias, int64_t rows,
                                              int64_t cols, uint8_t* mask) {
  const int64_t n = rows * cols;
  alignas(64) uint8_t flags[kMaskChunk + 8];
  int64_t col = 0;  // column of the next element
  for (int64_t e0 = 0; e0 < n; e0 += kMaskChunk) {
    const int64_t len = std::min(kMaskChunk, n - e0);
    for (int64_t i = 0; i < len;) {
      const int64_t seg = std::min(len - i, cols - col);
      const T* s = in + e0 + i;
      T* o = out + e0 + i;
      uint8_t* f = flags + i;
      if (bias != nullptr) {
        const T* b = bias + col;
        for (int64_t j = 0; j < seg; ++j) {
          const Acc y = static_cast<Acc>(s[j]) + static_cast<Acc>(b[j]);
          if (kWithMask) f[j] = core::relu_passes(y);
          o[j] = static_cast<T>(core::relu(y));
        }
      } else {
        for (int64_t j = 0; j < seg; ++j) {
          const Acc y = static_cast<Acc>(s[j]);
          if (kWithMask) f[j] = core::relu_passes(y);
          o[j] = static_cast<T>(core::relu(y));
        }
      }
      i += seg;
      col += seg;
      if (col == cols) col = 0;
    }
    if (kWithMask) {
      pack_flags(flags, len, mask + e0 / 8);
    }
  }
}

// Unsigned integer of a given byte size (the bit pattern of a T).
template <size_t N>
struct UIntOfSize;
template <>
struct UIntOfSize<2> {
  using type = uint16_t;
};
template <>
struct UIntOfSize<4> {
  using type = uint32_t;
};
template <>
struct UIntOfSize<8> {
  using type = uint64_t;
};

#if RELU_EXT_CPU_VECTOR_BYTES == 64 && defined(__x86_64__)
// Lanes [0, len) of the 64 bytes at p (len <= 64 / sizeof(T)) that are > 0
// as signed integers, one mask bit each.
template <typename T>
RELU_EXT_CPU_TARGET inline uint64_t positive_lanes(const T* p, int64_t len) {
  constexpr int64_t kLanes = 64 / sizeof(T);
  const uint64_t lanes = len >= kLanes ? ~uint64_t{0} >> (64 - kLanes) : (uint64_t{1} << len) - 1;
  const __m512i zero = _mm512_setzero_si512();
  if constexpr (sizeof(T) == 2) {
    const auto k = static_cast<__mmask32>(lanes);
    return _mm512_mask_cmpgt_epi16_mask(k, _mm512_maskz_loadu_epi16(k, p), zero);
  } else if constexpr (sizeof(T) == 4) {
    const auto k = static_cast<__mmask16>(lanes);
    return _mm512_mask_cmpgt_epi32_mask(k, _mm512_maskz_loadu_epi32(k, p), zero);
  } else {
    const auto k = static_cast<__mmask8>(lanes);
    return _mm512_mask_cmpgt_epi64_mask(k, _mm512_maskz_loadu_epi64(k, p), zero);
  }
}
#endif

// Mask bits of n elements of a ReLU output that holds no NaN (see
// gemm.cpp's oneDNN route): bit = out > 0, which is relu_passes of the
// pre-activation when that was not NaN. `out` starts on a mask byte. Read
// as signed integers (> 0: sign clear and not +0.0). The AVX-512 build
// compares a vector of them straight into a mask register, whose bits are
// the mask's (LSB first): twice as fast as packing byte flags, and this
// pass costs up to ~70% of the product on output-bound training forwards.
template <typename T>
RELU_EXT_CPU_TARGET void positive_mask_block(const T* out, int64_t n, uint8_t* mask) {
#if RELU_EXT_CPU_VECTOR_BYTES == 64 && defined(__x86_64__)
  constexpr int64_t kLanes = 64 / sizeof(T);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const uint64_t bits = positive_lanes(out + i, kLanes);
    std::memcpy(mask + i / 8, &bits, kLanes / 8);  // little-endian: LSB first
  }
  if (i < n) {
    const uint64_t bits = positive_lanes(out + i, n - i);
    std::memcpy(mask + i / 8, &bits, static_cast<size_t>((n - i + 7) / 8));
  }
#else
  using S = std::make_signed_t<typename UIntOfSize<sizeof(T)>::type>;
  alignas(64) uint8_t flags[kMaskChunk + 8];
  for (int64_t e0 = 0; e0 < n; e0 += kMaskChunk) {
    const int64_t len = std::min(kMaskChunk, n - e0);
    for (int64_t j = 0; j < len; ++j) {
      S bits;
      std::memcpy(&bits, out + e0 + j, sizeof(T));
      flags[j] = bits > 0;
    }
    pack_flags(flags, len, mask + e0 / 8);
  }
#endif
}

// ReLU (y < 0 ? 0 : y, NaN and -0.0 kept) of n contiguous elements from `in`
// into `out` (may be `in`), and, when mask is not null, their mask bits
// (y not <= 0: positive or NaN; `in` starts on a mask byte). On the bit
// patterns, which vectorizes for every T (no conversion of 16-bit types).
template <typename T, bool kWithMask>
RELU_EXT_CPU_TARGET void relu_bits_block(const T* in, T* out, int64_t n, uint8_t* mask) {
  using U = typename UIntOfSize<sizeof(T)>::type;
  using S = std::make_signed_t<U>;
  constexpr U kAbs = static_cast<U>(std::numeric_limits<U>::max() >> 1);
  const T inf = std::numeric_limits<T>::infinity();
  U inf_bits;
  std::memcpy(&inf_bits, &inf, sizeof(T));
  alignas(64) uint8_t flags[kMaskChunk + 8];
  for (int64_t e0 = 0; e0 < n; e0 += kMaskChunk) {
    const int64_t len = std::min(kMaskChunk, n - e0);
    for (int64_t j = 0; j < len; ++j) {
      U bits;
      std::memcpy(&bits, in + e0 + j, sizeof(T));
      const U mag = bits & kAbs;
      const bool nan = mag > inf_bits;
      const bool negative = static_cast<S>(bits) < 0 && mag != 0 && !nan;
      if (kWithMask) flags[j] = static_cast<uint8_t>(static_cast<S>(bits) > 0 || nan);
      const U o = negative ? U(0) : bits;
      std::memcpy(out + e0 + j, &o, sizeof(T));
    }
    if (kWithMask) {
      pack_flags(flags, len, mask + e0 / 8);
    }
  }
}

// Largest |v| of n elements, or +Inf when any is NaN or infinite. On the bit
// patterns: without the sign bit they order as the magnitudes do, and the
// all-ones exponent (Inf, NaN) is at the top.
template <typename T>
RELU_EXT_CPU_TARGET float max_abs_block(const T* p, int64_t n) {
  using U = typename UIntOfSize<sizeof(T)>::type;
  constexpr U kAbs = static_cast<U>(std::numeric_limits<U>::max() >> 1);
  U mx = 0;
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    std::memcpy(&bits, p + i, sizeof(T));
    bits &= kAbs;
    mx = bits > mx ? bits : mx;
  }
  T v;
  std::memcpy(&v, &mx, sizeof(T));
  const float f = static_cast<float>(v);
  return f == f ? f : std::numeric_limits<float>::infinity();
}

// grad_masked = mask ? grad : 0 on a contiguous (rows, cols) block whose first
// element has flat index e0 (a multiple of 8) in the mask. When bias_acc is not
// null, adds each column's sum of grad_masked to bias_acc[col]. grad_masked may
// be null when only the sums are wanted (then bias_acc must not be).
// The mask bits are first widened to all-ones/all-zeros words of T's size, so
// the select is a bitwise AND that vectorizes without widening bytes (an
// AND with 0 gives +0.0, as the select did, NaN included).
template <typename T, typename Red>
RELU_EXT_CPU_TARGET void mask_grad_block(const T* grad, T* grad_masked, const uint8_t* mask,
                                         int64_t e0, int64_t rows, int64_t cols, Red* bias_acc) {
  using U = typename UIntOfSize<sizeof(T)>::type;
  const int64_t n = rows * cols;
  alignas(64) U keep[kMaskChunk];
  const uint8_t* m = mask + e0 / 8;
  int64_t col = 0;
  for (int64_t e = 0; e < n; e += kMaskChunk) {
    const int64_t len = std::min(kMaskChunk, n - e);
    const int64_t nbytes = (len + 7) / 8;
    for (int64_t k = 0; k < nbytes; ++k) {
      const unsigned byte = m[e / 8 + k];
      for (int bit = 0; bit < 8; ++bit)
        keep[8 * k + bit] = static_cast<U>(U(0) - static_cast<U>((byte >> bit) & 1u));
    }
    for (int64_t i = 0; i < len;) {
      const int64_t seg = std::min(len - i, cols - col);
      const T* g = grad + e + i;
      const U* kp = keep + i;
      if (grad_masked != nullptr) {
        T* o = grad_masked + e + i;
        for (int64_t j = 0; j < seg; ++j) {
          U bits;
          std::memcpy(&bits, g + j, sizeof(T));
          bits &= kp[j];
          std::memcpy(o + j, &bits, sizeof(T));
        }
        if (bias_acc != nullptr) {
          Red* b = bias_acc + col;
          for (int64_t j = 0; j < seg; ++j) b[j] += static_cast<Red>(o[j]);
        }
      } else {
        Red* b = bias_acc + col;
        for (int64_t j = 0; j < seg; ++j) {
          U bits;
          std::memcpy(&bits, g + j, sizeof(T));
          bits &= kp[j];
          T v;
          std::memcpy(&v, &bits, sizeof(T));
          b[j] += static_cast<Red>(v);
        }
      }
      i += seg;
      col += seg;
      if (col == cols) col = 0;
    }
  }
}

// This build's kernel table for dtype T.
template <typename T>
constexpr FusedLinearReluKernel<T> make_kernel() {
  using Acc = acc_t<T>;
  return {&bias_relu_mask_block<T, Acc, false>,
          &bias_relu_mask_block<T, Acc, true>,
          &relu_bits_block<T, false>,
          &relu_bits_block<T, true>,
          &positive_mask_block<T>,
          &max_abs_block<T>,
          &mask_grad_block<T, double>};
}

}  // namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA::fused_linear_relu_loops

RELU_EXT_CPU_REGISTER_KERNELS(FusedLinearReluKernel, fused_linear_relu_kernels,
                              fused_linear_relu_loops::make_kernel)
