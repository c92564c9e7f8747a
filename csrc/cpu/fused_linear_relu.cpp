// CPU kernels of fused_linear_relu (forward, forward with mask, backward) and
// of relu_mask_unpack.
//
// Forward, float32 on our own matrix product (own_sgemm(), see loops.h): bias,
// ReLU and the mask bits are applied to each register tile of the result, so
// the output is written once. Otherwise (other dtypes, or ATen's product
// chosen): the output is produced one row block at a time, the BLAS product
// writes the block, then bias + ReLU + mask packing run over it while it is
// still in cache. No second output-sized buffer, no separate pass over memory.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../core/relu_mask.h"
#include "loops.h"

namespace torch_relu_ext::cpu {
namespace {

using at::Tensor;

// Row blocks of the forward and backward. Each block's product runs
// multi-threaded in BLAS, then the element-wise part (forward: bias, ReLU,
// mask; backward: the masked gradient the block's products read) runs over
// the block, split among the threads, while it is still in cache.
// Measured on a 2-core EPYC (1 MiB L2 per core, 32 MiB L3):
// - blocks of ~4 MiB of output keep the element-wise pass in cache;
// - BLAS called on small row blocks from inside a parallel region does not
//   stay single-threaded and ran 2-3x slower than one large product, so
//   blocks run one after the other, each product using every thread;
// - fewer than 256 rows, or fewer rows than input features, cost the products
//   their efficiency (2048x4096x4096: 256-row blocks 10% slower than one
//   product; in the backward each block also re-reads and re-writes all of
//   grad_weight), so blocks are at least that tall. Wide layers then run as
//   one block: their products dwarf the element-wise work anyway.
// Rows per block are a multiple of 8 (blocks start on mask bytes) and depend
// only on the shape (never on the thread count: results are reproducible).
constexpr int64_t kBlockBytes = 4 * 1024 * 1024;
constexpr int64_t kMinBlockRows = 256;

int64_t round_up8(int64_t v) { return (v + 7) / 8 * 8; }

// A 64-byte aligned float buffer kept by a thread between calls: the packed
// blocks of the matrix product would otherwise be fresh allocations, whose
// page faults cost more than packing them.
class Scratch {
 public:
  float* get(int64_t floats) {
    if (floats > size_) {
      const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) / 64 * 64;
      ptr_.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
      TORCH_CHECK(ptr_ != nullptr, "relu_ext: out of memory allocating ", bytes,
                  " bytes of matrix-product scratch");
      size_ = floats;
    }
    return ptr_.get();
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> ptr_;
  int64_t size_ = 0;
};

// C (m x n, row-major, leading dimension ldc) = or += (accumulate) a x b, with
// our float32 kernels (sgemm.h); ep, when given, is applied to the finished
// result. Threads split C's rows in whole register tiles (so, for the mask,
// in multiples of 8 rows) and, when there are too few row tiles to keep every
// thread busy, its columns in whole panels too (only where mask bytes cannot
// straddle two column groups: no mask, or a mask row length that is a
// multiple of 8 bits). Each element is reduced in the same order whatever
// the split. k must be > 0.
void own_gemm(const sgemm::Kernels& kern, sgemm::View a, sgemm::View b, int64_t m, int64_t n,
              int64_t k, float* c, int64_t ldc, bool accumulate, const sgemm::Epilogue* ep) {
  thread_local Scratch packed_b_buf;
  float* packed_b = packed_b_buf.get(kern.packed_b_floats);
  const int64_t row_tiles = (m + kern.mr - 1) / kern.mr;
  const int64_t threads = at::get_num_threads();
  const bool columns_may_split = ep == nullptr || ep->mask == nullptr || ep->mask_ld % 8 == 0;
  for (int64_t j0 = 0; j0 < n; j0 += kern.nc) {
    const int64_t nc = std::min(kern.nc, n - j0);
    const int64_t panels = (nc + kern.nr - 1) / kern.nr;
    const int64_t col_groups = columns_may_split && row_tiles < 2 * threads
                                   ? std::min(panels, (2 * threads + row_tiles - 1) / row_tiles)
                                   : 1;
    const int64_t group_panels = (panels + col_groups - 1) / col_groups;
    for (int64_t k0 = 0; k0 < k; k0 += kern.kc) {
      const int64_t kc = std::min(kern.kc, k - k0);
      const bool last = k0 + kc >= k;
      at::parallel_for(
          0, panels, std::max<int64_t>(1, 16384 / (kc * kern.nr)),
          [&](int64_t p0, int64_t p1) { kern.pack_b(b, k0, kc, j0, nc, p0, p1, packed_b); });
      // Tasks (a row tile x a column group each), as many per thread as make
      // at least ~256k multiply-adds.
      const int64_t task_macs = kern.mr * std::min(nc, group_panels * kern.nr) * kc;
      const int64_t grain = std::max<int64_t>(1, (1 << 18) / task_macs);
      at::parallel_for(0, row_tiles * col_groups, grain, [&](int64_t t0, int64_t t1) {
        thread_local Scratch a_buf;
        float* a_scratch = a_buf.get(kern.a_scratch_floats);
        for (int64_t t = t0; t < t1;) {
          // A run of tasks in one column group: its consecutive row tiles.
          const int64_t g = t % col_groups;
          const int64_t r0 = t / col_groups;
          int64_t r1 = r0 + 1;
          if (col_groups == 1) r1 = r0 + (t1 - t);
          t += r1 - r0;
          const int64_t p0 = g * group_panels;
          const int64_t p1 = std::min(panels, p0 + group_panels);
          if (p0 >= p1) continue;
          const int64_t n0 = j0 + p0 * kern.nr;
          kern.block(a, r0 * kern.mr, std::min(m, r1 * kern.mr), k0, kc,
                     packed_b + p0 * kc * kern.nr, n0,
                     std::min(nc - p0 * kern.nr, (p1 - p0) * kern.nr), c, ldc, accumulate || k0 > 0,
                     last ? ep : nullptr, a_scratch);
        }
      });
    }
  }
}

// Products own_gemm takes: its 8-row tiles waste most of their work on fewer
// rows, and for a handful of rows packing B (a full pass over the weight)
// costs more than BLAS's whole product; below 8 columns, even its narrowest
// tile (16 columns) is mostly padding. Measured on the Zen 5 (times of
// ATen's): 1 row 3.4x, 4 rows 1.1x, 16 rows 0.7x; 1-4 columns 1.1-2.5x, 8-24
// columns 0.5-0.6x.
bool own_gemm_fits(int64_t m, int64_t n, int64_t k) { return m >= 16 && n >= 8 && k > 0; }

// Strided view of a 2-D float tensor for own_gemm, transposed when asked.
sgemm::View view_of(const Tensor& t, bool transpose = false) {
  const float* p = t.data_ptr<float>();
  return transpose ? sgemm::View{p, t.stride(1), t.stride(0)}
                   : sgemm::View{p, t.stride(0), t.stride(1)};
}

int64_t block_rows(int64_t out_f, int64_t in_f, int64_t elem_size) {
  const int64_t rows = kBlockBytes / std::max<int64_t>(1, out_f * elem_size);
  return round_up8(std::max({kMinBlockRows, rows, in_f}));
}

template <bool kWithMask>
std::tuple<Tensor, Tensor> forward_impl(const char* op, const Tensor& input, const Tensor& weight,
                                        const std::optional<Tensor>& bias_opt) {
  detail::check_linear_args(op, input, weight, bias_opt);
  const int64_t out_f = weight.size(0);
  const Tensor x = detail::as_rows(input);
  const int64_t rows = x.size(0);
  std::vector<int64_t> out_sizes = input.sizes().vec();
  out_sizes.back() = out_f;

  Tensor out = at::empty({rows, out_f}, input.options());
  Tensor mask;
  if (kWithMask) {
    mask = at::empty({core::relu_mask_bytes(rows, out_f, /*padded=*/false)},
                     input.options().dtype(at::kByte));
  }
  if (rows == 0 || out_f == 0) return {out.view(out_sizes), mask};

  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const Tensor bias = has_bias ? bias_opt->contiguous() : Tensor();
  const Tensor wt = weight.t();

  // float32 on our own product (see loops.h): the epilogue runs on each tile
  // of the result in registers, so the output is written once.
  const sgemm::Kernels* own = own_sgemm();
  if (own != nullptr && out.scalar_type() == at::kFloat && own_gemm_fits(rows, out_f, x.size(1))) {
    if (kWithMask) mask.zero_();
    const sgemm::Epilogue ep{has_bias ? bias.data_ptr<float>() : nullptr, true,
                             kWithMask ? mask.data_ptr<uint8_t>() : nullptr, out_f};
    own_gemm(*own, view_of(x), view_of(weight, /*transpose=*/true), rows, out_f, x.size(1),
             out.data_ptr<float>(), out_f, false, &ep);
    return {out.view(out_sizes), mask};
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, out.scalar_type(), "fused_linear_relu_cpu", [&] {
        const Loops<scalar_t>& loops_t = loops().get<scalar_t>();
        const auto epilogue_fn = kWithMask ? loops_t.bias_relu_mask : loops_t.bias_relu;
        scalar_t* out_p = out.data_ptr<scalar_t>();
        const scalar_t* bias_p = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
        uint8_t* mask_p = kWithMask ? mask.data_ptr<uint8_t>() : nullptr;
        const int64_t brows = block_rows(out_f, x.size(1), sizeof(scalar_t));
        const int64_t nblocks = (rows + brows - 1) / brows;

        auto epilogue = [&](int64_t r0, int64_t r1) {
          epilogue_fn(out_p + r0 * out_f, bias_p, r1 - r0, out_f,
                      kWithMask ? mask_p + (r0 * out_f) / 8 : nullptr);
        };
        auto product = [&](int64_t r0, int64_t r1) {
          Tensor block = out.narrow(0, r0, r1 - r0);
          at::mm_out(block, x.narrow(0, r0, r1 - r0), wt);
        };

        // 8-row groups: mask bytes are never shared between threads.
        const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 8 * out_f));
        for (int64_t b = 0; b < nblocks; ++b) {
          const int64_t r0 = b * brows;
          const int64_t r1 = std::min(rows, r0 + brows);
          product(r0, r1);
          const int64_t groups = (r1 - r0 + 7) / 8;
          at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
            epilogue(r0 + g0 * 8, std::min(r1, r0 + g1 * 8));
          });
        }
      });
  return {out.view(out_sizes), mask};
}

Tensor fused_linear_relu_cpu(const Tensor& input, const Tensor& weight,
                             const std::optional<Tensor>& bias) {
  return std::get<0>(forward_impl<false>("relu_ext::fused_linear_relu", input, weight, bias));
}

std::tuple<Tensor, Tensor> fused_linear_relu_forward_cpu(const Tensor& input, const Tensor& weight,
                                                         const std::optional<Tensor>& bias) {
  return forward_impl<true>("relu_ext::fused_linear_relu_forward", input, weight, bias);
}

// Backward, one row block at a time (see block_rows): the masked gradient of
// a block (mask ? grad_output : 0, plus its column sums for the bias
// gradient) is written to a block-sized buffer that is reused, and the two
// products consume it while it is still in cache: grad_input's rows of the
// block, and the block's term of grad_weight (accumulated in block order). No
// output-sized temporary: for large layers its allocation (page faults on
// fresh memory) cost as much as the products. 16-bit types keep one full
// masked gradient and one product for grad_weight, so that grad_weight is
// rounded once (as in eager) rather than once per block.
//
// Determinism: block and chunk sizes depend only on the shape, partial bias
// sums are taken per chunk in double and added in chunk order, and the
// grad_weight terms are added in block order.
constexpr int64_t kBiasChunks = 16;  // per block

std::tuple<Tensor, Tensor, Tensor> fused_linear_relu_backward_cpu(const Tensor& grad_output,
                                                                  const Tensor& input,
                                                                  const Tensor& weight,
                                                                  const Tensor& mask,
                                                                  std::array<bool, 3> output_mask) {
  detail::check_linear_backward_args("relu_ext::fused_linear_relu_backward", grad_output, input,
                                     weight, mask);
  const int64_t out_f = weight.size(0);
  const int64_t in_f = weight.size(1);
  const Tensor x = detail::as_rows(input);
  const Tensor g = detail::as_rows(grad_output).contiguous();
  const Tensor m = mask.contiguous();
  const int64_t rows = x.size(0);
  const bool want_gm = output_mask[0] || output_mask[1];
  const bool half = at::isReducedFloatingType(g.scalar_type());

  Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty({rows, in_f}, g.options());
  if (output_mask[1]) grad_weight = at::empty({out_f, in_f}, weight.options());
  if (output_mask[2]) grad_bias = at::empty({out_f}, weight.options());
  if (!want_gm && !output_mask[2]) return {};
  if (rows == 0 || out_f == 0) {
    // Nothing flows back: every gradient is zero (or empty).
    if (grad_input.defined()) grad_input.zero_();
    if (grad_weight.defined()) grad_weight.zero_();
    if (grad_bias.defined()) grad_bias.zero_();
    return {output_mask[0] ? grad_input.view(input.sizes()) : Tensor(), grad_weight, grad_bias};
  }

  const int64_t brows =
      half ? rows : std::min(rows, block_rows(out_f, in_f, static_cast<int64_t>(g.element_size())));
  const int64_t nblocks = (rows + brows - 1) / brows;
  Tensor gm;
  if (want_gm) gm = at::empty({brows, out_f}, g.options());
  const sgemm::Kernels* own = own_sgemm();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, g.scalar_type(), "fused_linear_relu_backward_cpu", [&] {
        std::vector<double> partial, total;
        if (output_mask[2]) {
          partial.assign(kBiasChunks * out_f, 0.0);
          total.assign(out_f, 0.0);
        }
        const auto mask_grad = loops().get<scalar_t>().mask_grad;
        const scalar_t* g_p = g.data_ptr<scalar_t>();
        scalar_t* gm_p = want_gm ? gm.data_ptr<scalar_t>() : nullptr;
        const uint8_t* m_p = m.data_ptr<uint8_t>();
        for (int64_t b = 0; b < nblocks; ++b) {
          const int64_t r0 = b * brows;
          const int64_t n = std::min(rows, r0 + brows) - r0;
          const int64_t chunk_rows =
              std::max<int64_t>(8, round_up8((n + kBiasChunks - 1) / kBiasChunks));
          const int64_t nchunks = (n + chunk_rows - 1) / chunk_rows;
          at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t s0 = c * chunk_rows;
              const int64_t s1 = std::min(n, s0 + chunk_rows);
              double* acc = output_mask[2] ? partial.data() + c * out_f : nullptr;
              if (acc != nullptr) std::fill(acc, acc + out_f, 0.0);
              mask_grad(g_p + (r0 + s0) * out_f, gm_p != nullptr ? gm_p + s0 * out_f : nullptr, m_p,
                        (r0 + s0) * out_f, s1 - s0, out_f, acc);
            }
          });
          if (output_mask[2]) {
            for (int64_t c = 0; c < nchunks; ++c) {
              const double* acc = partial.data() + c * out_f;
              for (int64_t o = 0; o < out_f; ++o) total[o] += acc[o];
            }
          }
          if (!want_gm) continue;
          const Tensor gm_b = gm.narrow(0, 0, n);
          // float32 on our own product where it fits (see own_gemm_fits).
          const bool own_f32 = std::is_same_v<scalar_t, float> && own != nullptr;
          if (output_mask[0] && own_f32 && own_gemm_fits(n, in_f, out_f)) {
            // grad_input rows = gm_b x W.
            own_gemm(*own, view_of(gm_b), view_of(weight), n, in_f, out_f,
                     grad_input.data_ptr<float>() + r0 * in_f, in_f, false, nullptr);
          } else if (output_mask[0]) {
            Tensor gi_b = grad_input.narrow(0, r0, n);
            at::mm_out(gi_b, gm_b, weight);
          }
          if (output_mask[1] && own_f32 && own_gemm_fits(out_f, in_f, rows)) {
            // grad_weight (+)= gm_b^T x x_b (the choice depends on the whole
            // batch, not the block: one product for every block).
            own_gemm(*own, view_of(gm_b, /*transpose=*/true), view_of(x.narrow(0, r0, n)), out_f,
                     in_f, n, grad_weight.data_ptr<float>(), in_f, b > 0, nullptr);
          } else if (output_mask[1]) {
            const Tensor x_b = x.narrow(0, r0, n);
            if (b == 0) {
              at::mm_out(grad_weight, gm_b.t(), x_b);
            } else {
              grad_weight.addmm_(gm_b.t(), x_b);
            }
          }
        }
        if (output_mask[2]) {
          scalar_t* gb = grad_bias.data_ptr<scalar_t>();
          for (int64_t o = 0; o < out_f; ++o) gb[o] = static_cast<scalar_t>(total[o]);
        }
      });

  return {output_mask[0] ? grad_input.view(input.sizes()) : Tensor(), grad_weight, grad_bias};
}

Tensor relu_mask_unpack_cpu(const Tensor& mask, c10::SymIntArrayRef sym_size) {
  const at::IntArrayRef size = C10_AS_INTARRAYREF_SLOW(sym_size);
  Tensor out = at::empty(size, mask.options().dtype(at::kBool));
  const auto [rows, cols] = detail::output_rows_cols(out);
  detail::check_mask_unpack_args("relu_ext::relu_mask_unpack", mask, rows, cols);
  const Tensor m = mask.contiguous();
  const uint8_t* m_p = m.data_ptr<uint8_t>();
  bool* o = out.data_ptr<bool>();
  const int64_t ld = core::relu_mask_ld(cols, false);
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cols)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r) {
                       for (int64_t c = 0; c < cols; ++c) {
                         o[r * cols + c] = core::relu_mask_bit(m_p, r * ld + c);
                       }
                     }
                   });
  return out;
}

Tensor relu_mask_count_cpu(const Tensor& mask, const Tensor& output) {
  const auto [rows, cols] = detail::output_rows_cols(output);
  detail::check_mask_unpack_args("relu_ext::relu_mask_count", mask, rows, cols);
  Tensor counts = at::zeros({cols}, mask.options().dtype(at::kLong));
  if (rows == 0 || cols == 0) return counts;
  const Tensor m = mask.contiguous();
  const uint8_t* m_p = m.data_ptr<uint8_t>();
  const int64_t ld = core::relu_mask_ld(cols, false);
  // Fixed row chunks with private counters, summed in order.
  const int64_t nchunks = std::clamp<int64_t>(rows * cols / 262144, 1, 64);
  const int64_t per = (rows + nchunks - 1) / nchunks;
  std::vector<int64_t> partial(nchunks * cols, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* acc = partial.data() + c * cols;
      for (int64_t r = c * per; r < std::min(rows, (c + 1) * per); ++r) {
        for (int64_t o = 0; o < cols; ++o) acc[o] += core::relu_mask_bit(m_p, r * ld + o);
      }
    }
  });
  int64_t* out = counts.data_ptr<int64_t>();
  for (int64_t c = 0; c < nchunks; ++c) {
    for (int64_t o = 0; o < cols; ++o) out[o] += partial[c * cols + o];
  }
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
  m.impl("relu_mask_count", &relu_mask_count_cpu);
}

// Sparse and quantized CPU tensors dispatch to their own keys: the same
// kernels reject them there, with a message that names the argument.
TORCH_LIBRARY_IMPL(relu_ext, SparseCPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
}
TORCH_LIBRARY_IMPL(relu_ext, SparseCsrCPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
}
TORCH_LIBRARY_IMPL(relu_ext, QuantizedCPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
}

}  // namespace torch_relu_ext::cpu
