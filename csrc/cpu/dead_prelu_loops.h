// CPU inner loops of dead_prelu, free of ATen. The tensor is seen as a dense
// [A, C, B] array (C channels; A and B the products of the dimensions laid out
// before and after the channel dimension in memory), which covers contiguous,
// channels-last and any other dense permutation without a copy.
//   "rows" loops: B == 1, each of A rows holds C channels side by side.
//   "flat" loops: B > 1, runs of B elements share one channel.
// Reductions (active counts, grad_weight) go to caller-provided per-chunk
// buffers so the caller can sum them in a fixed order (deterministic results
// whatever the thread count).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/relu_math.h"
#include "dead_prelu_kernel.h"
#include "isa_build.h"

#if RELU_EXT_CPU_VECTOR_BYTES == 64 && defined(__x86_64__)
#include <immintrin.h>
#endif

// Each operator's loops have a namespace of their own inside the build's
// namespace: every loop header meets the others in each isa_*.cpp file.
namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA::dead_prelu_loops {

// Sums and counts are kept in 32-bit counters and Acc (float for the 16-bit
// types) partial sums, flushed to the caller's buffers every kRowBlock rows
// or kRun elements: often enough for the partial sums to stay accurate,
// rarely enough to cost nothing. The order of every sum is fixed by the code,
// not by the instruction set or the thread count.
constexpr int64_t kRowBlock = 256;
constexpr int64_t kLanes = 16;
constexpr int64_t kRun = 4096;

// One vector register of float or double (GCC/Clang vector extension): the
// including file sets RELU_EXT_CPU_VECTOR_BYTES to its instruction set's
// register width (wider generic vectors were lowered to slow code).
#ifndef RELU_EXT_CPU_VECTOR_BYTES
#define RELU_EXT_CPU_VECTOR_BYTES 16
#endif
template <typename A>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(RELU_EXT_CPU_VECTOR_BYTES)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(RELU_EXT_CPU_VECTOR_BYTES)));
};

// Rows of C channels side by side (B == 1: 2-D inputs, channels-last), read
// and written strictly in memory order: that is what keeps a memory-bound
// pass at copy speed (the alternatives tried: docs/performance.md).
// C up to kMaxRegVectors vectors (and a whole number of them): every counter
// stays in a register (rows_regs). A whole number of vectors in rows of up to
// kMaxGroupedRowBytes: the same, in groups of kMaxRegVectors vectors over
// chunks of rows that stay in L2. Other C: counters in an array (in L1 for
// up to thousands of channels), updated per vector (rows_generic).
constexpr int64_t kMaxRegVectors = 8;
constexpr int64_t kFlush = int64_t{1} << 30;  // rows between counter flushes (no int32 overflow)

// NT vectors of channels of rows that are ld elements apart.
template <typename Acc, int64_t NT>
RELU_EXT_CPU_TARGET void prelu_forward_rows_regs(const Acc* __restrict x, Acc* __restrict y,
                                                 const Acc* __restrict wt, int64_t rows, int64_t ld,
                                                 int64_t* counts) {
  using V = typename VecOf<Acc>::type;
  using M = decltype(V{} > V{});
  constexpr int64_t kL = static_cast<int64_t>(sizeof(V) / sizeof(Acc));
  for (int64_t s0 = 0; s0 < rows; s0 += kFlush) {
    const int64_t s1 = std::min(rows, s0 + kFlush);
    M cnt[NT] = {};
    for (int64_t r = s0; r < s1; ++r) {
      for (int64_t t = 0; t < NT; ++t) {
        V v, wv;
        std::memcpy(&v, x + r * ld + t * kL, sizeof v);
        std::memcpy(&wv, wt + t * kL, sizeof wv);
        const M pos = v > V{};
        const V out = pos ? v : wv * v;
        std::memcpy(y + r * ld + t * kL, &out, sizeof out);
        cnt[t] -= pos;  // true is -1
      }
    }
    for (int64_t t = 0; t < NT; ++t) {
      for (int64_t j = 0; j < kL; ++j) counts[t * kL + j] += cnt[t][j];
    }
  }
}

template <typename T, typename Acc>
RELU_EXT_CPU_TARGET void prelu_forward_rows_generic(const T* __restrict x, T* __restrict y,
                                                    const T* __restrict w, bool w_scalar,
                                                    int64_t rows, int64_t C, int64_t* counts) {
  // Counters of the comparison's lane width (int32 for float, int64 for
  // double): a vector of them is the comparison result's type.
  using Count = std::conditional_t<sizeof(Acc) == 8, int64_t, int32_t>;
  std::vector<Count> cnt_v(C);
  std::vector<Acc> wt_v(C);
  Count* __restrict cnt = cnt_v.data();
  Acc* __restrict wt = wt_v.data();
  constexpr int64_t kL = RELU_EXT_CPU_VECTOR_BYTES / static_cast<int64_t>(sizeof(Acc));
  const int64_t full = std::is_same_v<T, Acc> ? C / kL * kL : 0;
  for (int64_t c = 0; c < C; ++c) wt[c] = static_cast<Acc>(w[w_scalar ? 0 : c]);
  for (int64_t s0 = 0; s0 < rows; s0 += kFlush) {
    const int64_t s1 = std::min(rows, s0 + kFlush);
    for (int64_t c = 0; c < C; ++c) cnt[c] = 0;
    for (int64_t r = s0; r < s1; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      if constexpr (std::is_same_v<T, Acc>) {
        using V = typename VecOf<Acc>::type;
        using M = decltype(V{} > V{});
        static_assert(sizeof(M) == sizeof(V) && sizeof(Count) == sizeof(Acc));
        for (int64_t c0 = 0; c0 < full; c0 += kL) {
          V v, wv;
          M acc;
          std::memcpy(&v, xr + c0, sizeof v);
          std::memcpy(&wv, wt + c0, sizeof wv);
          std::memcpy(&acc, cnt + c0, sizeof acc);
          const M pos = v > V{};
          const V out = pos ? v : wv * v;
          std::memcpy(yr + c0, &out, sizeof out);
          acc -= pos;
          std::memcpy(cnt + c0, &acc, sizeof acc);
        }
      }
      for (int64_t c = full; c < C; ++c) {  // the tail, and the 16-bit types
        const Acc v = static_cast<Acc>(xr[c]);
        yr[c] = static_cast<T>(core::prelu(v, wt[c]));
        cnt[c] += core::active(v);
      }
    }
    for (int64_t c = 0; c < C; ++c) counts[c] += cnt[c];
  }
}

#if RELU_EXT_CPU_VECTOR_BYTES == 64 && defined(__x86_64__)
// AVX-512 build, float rows of C = 32 * NU channels (160..512): in memory
// order with every counter in a register, as 16-bit lanes (two vectors of
// channels per counter register), flushed every kI16Flush rows; faster
// than groups of channels or the counter array (docs/performance.md).
constexpr int64_t kI16Flush = 32767;

template <int NU>
RELU_EXT_CPU_TARGET void prelu_forward_rows_i16(const float* __restrict x, float* __restrict y,
                                                const float* __restrict wt, int64_t rows,
                                                int64_t* counts) {
  constexpr int64_t kC = 32 * NU;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi16(1);
  for (int64_t s0 = 0; s0 < rows; s0 += kI16Flush) {
    const int64_t s1 = std::min(rows, s0 + kI16Flush);
    __m512i cnt[NU];
    for (int u = 0; u < NU; ++u) cnt[u] = _mm512_setzero_si512();
    for (int64_t r = s0; r < s1; ++r) {
      const float* xr = x + r * kC;
      float* yr = y + r * kC;
      for (int u = 0; u < NU; ++u) {
        const __m512 v0 = _mm512_loadu_ps(xr + 32 * u);
        const __m512 v1 = _mm512_loadu_ps(xr + 32 * u + 16);
        // x > 0 ? x : w * x, as core::prelu; active = x > 0.
        const __mmask16 p0 = _mm512_cmp_ps_mask(v0, zero, _CMP_GT_OQ);
        const __mmask16 p1 = _mm512_cmp_ps_mask(v1, zero, _CMP_GT_OQ);
        _mm512_storeu_ps(yr + 32 * u, _mm512_mask_blend_ps(
                                          p0, _mm512_mul_ps(_mm512_load_ps(wt + 32 * u), v0), v0));
        _mm512_storeu_ps(
            yr + 32 * u + 16,
            _mm512_mask_blend_ps(p1, _mm512_mul_ps(_mm512_load_ps(wt + 32 * u + 16), v1), v1));
        cnt[u] = _mm512_mask_add_epi16(cnt[u], _mm512_kunpackw(p1, p0), cnt[u], one);
      }
    }
    alignas(64) int16_t lanes[32];
    for (int u = 0; u < NU; ++u) {
      _mm512_store_si512(lanes, cnt[u]);
      for (int j = 0; j < 32; ++j) counts[32 * u + j] += lanes[j];
    }
  }
}

#endif

// Calls f(std::integral_constant<int, W>{}) for the W in [Lo, Hi] equal to n
// (register widths must be compile-time constants); false when none is.
template <int Lo, int Hi, typename F>
inline bool with_width(int64_t n, F&& f) {
  if constexpr (Lo > Hi) {
    return false;
  } else {
    if (n == Lo) {
      f(std::integral_constant<int, Lo>{});
      return true;
    }
    return with_width<Lo + 1, Hi>(n, f);
  }
}

// prelu_forward_rows_regs for a run-time number of vectors (1..kMaxRegVectors).
template <typename Acc>
RELU_EXT_CPU_TARGET void prelu_forward_rows_nt(int64_t nt, const Acc* x, Acc* y, const Acc* wt,
                                               int64_t rows, int64_t ld, int64_t* counts) {
  with_width<1, kMaxRegVectors>(nt, [&](auto w) {
    prelu_forward_rows_regs<Acc, decltype(w)::value>(x, y, wt, rows, ld, counts);
  });
}

// Rows up to which the register paths run (the weights are copied to a stack
// array): up to half a page, so every group of channels walks a chunk of
// rows within few pages. With 4 KiB rows (1024 floats) every row of a group
// is another page, the prefetchers restart at each, and the array path is
// faster (docs/performance.md).
constexpr int64_t kMaxGroupedRowBytes = 2048;

template <typename T, typename Acc>
RELU_EXT_CPU_TARGET void prelu_forward_rows(const T* __restrict x, T* __restrict y,
                                            const T* __restrict w, bool w_scalar, int64_t rows,
                                            int64_t C, int64_t* counts) {
  if constexpr (std::is_same_v<T, Acc>) {
    constexpr int64_t kL = RELU_EXT_CPU_VECTOR_BYTES / static_cast<int64_t>(sizeof(Acc));
    if (C % kL == 0 && C * int64_t{sizeof(Acc)} <= kMaxGroupedRowBytes) {
      alignas(64) Acc wt[kMaxGroupedRowBytes / sizeof(Acc)];
      for (int64_t c = 0; c < C; ++c) wt[c] = w[w_scalar ? 0 : c];
      if (C / kL <= kMaxRegVectors) {
        prelu_forward_rows_nt<Acc>(C / kL, x, y, wt, rows, C, counts);
        return;
      }
#if RELU_EXT_CPU_VECTOR_BYTES == 64 && defined(__x86_64__)
      if constexpr (std::is_same_v<Acc, float>) {
        // 160..512 channels, a multiple of 32.
        if (C % 32 == 0 && with_width<5, 16>(C / 32, [&](auto nu) {
              prelu_forward_rows_i16<decltype(nu)::value>(x, y, wt, rows, counts);
            })) {
          return;
        }
      }
#endif
      // Wider rows: groups of kMaxRegVectors vectors of channels, each over a
      // chunk of rows (~1 MiB, so the next group finds it in L2), counters
      // in registers throughout (chunk size: docs/performance.md).
      const int64_t chunk =
          std::max<int64_t>(1, (int64_t{1024} << 10) / (C * int64_t{sizeof(Acc)}));
      for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t n = std::min(chunk, rows - r0);
        for (int64_t c0 = 0; c0 < C; c0 += kMaxRegVectors * kL) {
          const int64_t nt = std::min<int64_t>(kMaxRegVectors, (C - c0) / kL);
          prelu_forward_rows_nt<Acc>(nt, x + r0 * C + c0, y + r0 * C + c0, wt + c0, n, C,
                                     counts + c0);
        }
      }
      return;
    }
  }
  prelu_forward_rows_generic<T, Acc>(x, y, w, w_scalar, rows, C, counts);
}

// Elements [e0, e1) of the flat [A, C, B] array (B > 1: runs of B elements
// share one channel).
template <typename T, typename Acc>
RELU_EXT_CPU_TARGET void prelu_forward_flat(const T* x, T* y, const T* w, bool w_scalar, int64_t e0,
                                            int64_t e1, int64_t C, int64_t B, int64_t* counts) {
  for (int64_t e = e0; e < e1;) {
    const int64_t run = e / B;
    const int64_t c = run % C;
    const int64_t end = std::min(e1, (run + 1) * B);
    const Acc wv = static_cast<Acc>(w[w_scalar ? 0 : c]);
    int64_t total = 0;
    for (; e < end;) {
      const int64_t len = std::min(kRun, end - e);
      const T* xs = x + e;
      T* ys = y + e;
      int32_t lane[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= len; j += kLanes) {
        for (int64_t k = 0; k < kLanes; ++k) {
          const Acc v = static_cast<Acc>(xs[j + k]);
          ys[j + k] = static_cast<T>(core::prelu(v, wv));
          lane[k] += core::active(v);
        }
      }
      for (; j < len; ++j) {
        const Acc v = static_cast<Acc>(xs[j]);
        ys[j] = static_cast<T>(core::prelu(v, wv));
        lane[0] += core::active(v);
      }
      for (int64_t k = 0; k < kLanes; ++k) total += lane[k];
      e += len;
    }
    counts[c] += total;
  }
}

template <typename T, typename Acc, typename Red>
RELU_EXT_CPU_TARGET void prelu_backward_rows(const T* __restrict x, const T* __restrict g,
                                             const T* __restrict w, bool w_scalar, int64_t rows,
                                             int64_t C, T* __restrict gi, Red* gw) {
  // Per-channel Acc sums over kRowBlock rows, flushed to Red; rows in memory
  // order, the inner loops plain vectorizable selects and adds over a row.
  std::vector<Acc> wv_v(C), block_v(C);
  Acc* __restrict wv = wv_v.data();
  Acc* __restrict block = block_v.data();
  for (int64_t c = 0; c < C; ++c) wv[c] = static_cast<Acc>(w[w_scalar ? 0 : c]);
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int64_t r1 = std::min(rows, r0 + kRowBlock);
    for (int64_t c = 0; c < C; ++c) block[c] = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;
      const T* gr = g + r * C;
      if (gi != nullptr) {
        T* out = gi + r * C;
        for (int64_t c = 0; c < C; ++c) {
          out[c] = static_cast<T>(
              core::prelu_grad_input(static_cast<Acc>(xr[c]), wv[c], static_cast<Acc>(gr[c])));
        }
      }
      if (gw != nullptr) {
        for (int64_t c = 0; c < C; ++c) {
          block[c] += core::prelu_grad_weight(static_cast<Acc>(xr[c]), static_cast<Acc>(gr[c]));
        }
      }
    }
    if (gw != nullptr) {
      for (int64_t c = 0; c < C; ++c) gw[c] += static_cast<Red>(block[c]);
    }
  }
}

template <typename T, typename Acc, typename Red>
RELU_EXT_CPU_TARGET void prelu_backward_flat(const T* x, const T* g, const T* w, bool w_scalar,
                                             int64_t e0, int64_t e1, int64_t C, int64_t B, T* gi,
                                             Red* gw) {
  for (int64_t e = e0; e < e1;) {
    const int64_t run = e / B;
    const int64_t c = run % C;
    const int64_t end = std::min(e1, (run + 1) * B);
    const Acc wv = static_cast<Acc>(w[w_scalar ? 0 : c]);
    Red total = 0;
    for (; e < end;) {
      const int64_t len = std::min(kRun, end - e);
      const T* xs = x + e;
      const T* gs = g + e;
      T* out = gi != nullptr ? gi + e : nullptr;
      // One pass: grad_input, and the grad_weight terms summed in kLanes
      // fixed lanes (a vector accumulator; no branch on the sign).
      Acc lane[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= len; j += kLanes) {
        for (int64_t k = 0; k < kLanes; ++k) {
          const Acc xv = static_cast<Acc>(xs[j + k]);
          const Acc gv = static_cast<Acc>(gs[j + k]);
          if (out != nullptr) out[j + k] = static_cast<T>(core::prelu_grad_input(xv, wv, gv));
          lane[k] += core::prelu_grad_weight(xv, gv);
        }
      }
      for (; j < len; ++j) {
        const Acc xv = static_cast<Acc>(xs[j]);
        const Acc gv = static_cast<Acc>(gs[j]);
        if (out != nullptr) out[j] = static_cast<T>(core::prelu_grad_input(xv, wv, gv));
        lane[0] += core::prelu_grad_weight(xv, gv);
      }
      if (gw != nullptr) {
        Red s = 0;
        for (int64_t k = 0; k < kLanes; ++k) s += static_cast<Red>(lane[k]);
        total += s;
      }
      e += len;
    }
    if (gw != nullptr) gw[c] += total;
  }
}

// This build's kernel table for dtype T.
template <typename T>
constexpr DeadPreluKernel<T> make_kernel() {
  using Acc = acc_t<T>;
  return {&prelu_forward_rows<T, Acc>, &prelu_forward_flat<T, Acc>,
          &prelu_backward_rows<T, Acc, double>, &prelu_backward_flat<T, Acc, double>};
}

}  // namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA::dead_prelu_loops

RELU_EXT_CPU_REGISTER_KERNELS(DeadPreluKernel, dead_prelu_kernels, dead_prelu_loops::make_kernel)
