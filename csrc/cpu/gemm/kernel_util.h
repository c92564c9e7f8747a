// Pieces the product kernels share (ATen-free): a buffer a thread keeps
// between calls, and the 16 x 16 transpose of 32-bit words in AVX-512
// registers (for packing operands).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace torch_relu_ext::cpu::gemm {

// A 64-byte aligned buffer of T, kept between calls: fresh allocations of
// packed operands cost more in page faults than the packing does.
template <typename T>
class Scratch {
 public:
  T* get(int64_t elems) {
    if (elems > size_) {
      const size_t bytes = (static_cast<size_t>(elems) * sizeof(T) + 63) / 64 * 64;
      ptr_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
      if (ptr_ == nullptr) {
        throw std::runtime_error("torch_relu_ext: out of memory allocating " +
                                 std::to_string(bytes) + " bytes of matrix-product scratch");
      }
      size_ = elems;
    }
    return ptr_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  int64_t size_ = 0;
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's AVX-512 shuffle intrinsics start from an undefined vector, which
// -W(maybe-)uninitialized reports once they are inlined (a known false
// positive: every lane is overwritten).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
// In place: rows r[0..15] of a 16 x 16 block of 32-bit words become its
// columns. Callers are AVX-512 functions (the CPU was checked).
__attribute__((target("avx512f"))) inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xDD);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

}  // namespace torch_relu_ext::cpu::gemm
