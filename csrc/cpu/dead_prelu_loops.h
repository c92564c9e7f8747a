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
#include <vector>

#include "../core/relu_math.h"
#include "loops_isa.h"

namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA {

// Sub-run length for reductions inside one channel run: short enough for
// 32-bit counters and for float lane sums to stay accurate.
constexpr int64_t kRun = 4096;
constexpr int kLanes = 8;

// `counts32` is caller scratch of C int32 counters: 32-bit lanes vectorize
// (int64 per-element increments did not); at most 2^31 - 1 rows per call.
template <typename T, typename Acc>
RELU_EXT_CPU_TARGET void prelu_forward_rows(const T* x, T* y, const T* w, bool w_scalar,
                                            int64_t rows, int64_t C, int64_t* counts,
                                            int32_t* counts32) {
  for (int64_t c = 0; c < C; ++c) counts32[c] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    if (w_scalar) {
      const Acc wv = static_cast<Acc>(w[0]);
      for (int64_t c = 0; c < C; ++c) {
        const Acc v = static_cast<Acc>(xr[c]);
        yr[c] = static_cast<T>(core::prelu(v, wv));
        counts32[c] += core::active(v);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const Acc v = static_cast<Acc>(xr[c]);
        yr[c] = static_cast<T>(core::prelu(v, static_cast<Acc>(w[c])));
        counts32[c] += core::active(v);
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) counts[c] += counts32[c];
}

// Elements [e0, e1) of the flat [A, C, B] array.
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
      int32_t cnt = 0;
      for (int64_t j = 0; j < len; ++j) {
        const Acc v = static_cast<Acc>(xs[j]);
        ys[j] = static_cast<T>(core::prelu(v, wv));
        cnt += core::active(v);
      }
      total += cnt;
      e += len;
    }
    counts[c] += total;
  }
}

template <typename T, typename Acc, typename Red>
RELU_EXT_CPU_TARGET void prelu_backward_rows(const T* x, const T* g, const T* w, bool w_scalar,
                                             int64_t rows, int64_t C, T* gi, Red* gw) {
  // Per-channel float sums over blocks of rows, flushed to Red: the inner
  // loops are plain vectorizable selects and adds over the C channels.
  constexpr int64_t kBlock = 256;
  std::vector<Acc> wv(C), block(C);
  for (int64_t c = 0; c < C; ++c) wv[c] = static_cast<Acc>(w[w_scalar ? 0 : c]);
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = std::min(rows, r0 + kBlock);
    for (int64_t c = 0; c < C; ++c) block[c] = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;
      const T* gr = g + r * C;
      const Acc* wp = wv.data();
      Acc* bp = block.data();
      if (gi != nullptr) {
        T* out = gi + r * C;
        for (int64_t c = 0; c < C; ++c) {
          out[c] = static_cast<T>(
              core::prelu_grad_input(static_cast<Acc>(xr[c]), wp[c], static_cast<Acc>(gr[c])));
        }
      }
      if (gw != nullptr) {
        for (int64_t c = 0; c < C; ++c) {
          bp[c] += core::prelu_grad_weight(static_cast<Acc>(xr[c]), static_cast<Acc>(gr[c]));
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
      // Per-element terms first (a vectorized select, no branch on the
      // sign), then a fixed-lane sum: same order on every run.
      alignas(64) Acc term[kRun];
      T* out = gi != nullptr ? gi + e : nullptr;
      for (int64_t j = 0; j < len; ++j) {
        const Acc xv = static_cast<Acc>(xs[j]);
        const Acc gv = static_cast<Acc>(gs[j]);
        if (out != nullptr) out[j] = static_cast<T>(core::prelu_grad_input(xv, wv, gv));
        term[j] = core::prelu_grad_weight(xv, gv);
      }
      if (gw != nullptr) {
        Acc lane[kLanes] = {};
        int64_t j = 0;
        for (; j + kLanes <= len; j += kLanes) {
          for (int k = 0; k < kLanes; ++k) lane[k] += term[j + k];
        }
        for (; j < len; ++j) lane[0] += term[j];
        Red s = 0;
        for (int k = 0; k < kLanes; ++k) s += static_cast<Red>(lane[k]);
        total += s;
      }
      e += len;
    }
    if (gw != nullptr) gw[c] += total;
  }
}

}  // namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA
