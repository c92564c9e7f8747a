// CUDA kernels of fused_linear_relu (forward, forward with mask, backward) and
// relu_mask_unpack.
//
// Forward: one cuBLASLt matmul whose epilogue adds the bias, applies ReLU and
// writes the 1-bit mask (CUBLASLT_EPILOGUE_RELU_AUX_BIAS / RELU_AUX; RELU_BIAS
// / RELU when no mask is needed). Where cuBLASLt declines (dtype, alignment,
// sizes, or TORCH_RELU_EXT_DISABLE_CUBLASLT=1), a cuBLAS product plus one
// fused bias + ReLU + mask kernel computes the same thing.
// Backward: one kernel applies the mask to grad_output and reduces the bias
// gradient per fixed row chunk (no float atomics: bitwise reproducible), a
// second sums the chunks in order; cuBLAS products give grad_input/weight.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../checks.h"
#include "../core/relu_mask.h"
#include "../core/relu_math.h"
#include "chunked_sum.cuh"

namespace torch_relu_ext::cuda {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------
// Fallback epilogue: out = relu(out + bias) in place, mask bits by warp ballot.
// One warp per 32-bit mask word: lanes read 32 consecutive columns of a row.
template <typename T, bool kWithMask>
__global__ void bias_relu_mask_kernel(T* __restrict__ out, const T* __restrict__ bias, int64_t rows,
                                      int64_t cols, int64_t ld, uint32_t* __restrict__ mask) {
  using acc_t = at::opmath_type<T>;
  const int lane = threadIdx.x & 31;
  const int64_t words_per_row = ld / 32;
  const int64_t total_words = rows * words_per_row;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
       w < total_words; w += warps) {
    const int64_t r = w / words_per_row;
    const int64_t c = (w - r * words_per_row) * 32 + lane;
    const bool in_row = c < cols;
    acc_t y = 0;
    if (in_row) {
      y = static_cast<acc_t>(out[r * cols + c]);
      if (bias != nullptr) y += static_cast<acc_t>(bias[c]);
      out[r * cols + c] = static_cast<T>(core::relu(y));
    }
    if (kWithMask) {
      const uint32_t bits = __ballot_sync(0xffffffffu, in_row && core::relu_passes(y));
      if (lane == 0) mask[w] = bits;
    }
  }
}

// Backward, stage 1: grad_masked = mask ? grad : 0; per (row chunk, column)
// partial sums of grad_masked. Block (32, 8): x over 32 columns, y over rows.
template <typename T, typename acc_t>
__global__ void mask_grad_kernel(const T* __restrict__ grad, T* __restrict__ grad_masked,
                                 const uint8_t* __restrict__ mask, int64_t rows, int64_t cols,
                                 int64_t ld, int64_t chunk_rows, acc_t* __restrict__ partial) {
  __shared__ acc_t sums[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = min(rows, r0 + chunk_rows);
  acc_t acc = 0;
  if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      const T g = grad[r * cols + c];
      const T v = core::relu_mask_bit(mask, r * ld + c) ? g : T(0);
      grad_masked[r * cols + c] = v;
      acc += static_cast<acc_t>(v);
    }
  }
  if (partial == nullptr) return;
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    acc_t s = 0;
    for (int i = 0; i < 8; ++i) s += sums[i][threadIdx.x];  // fixed order
    partial[static_cast<int64_t>(blockIdx.y) * cols + c] = s;
  }
}

// Stage 1, vectorized: when out_features % 8 == 0 and the buffers are 16-byte
// aligned, each thread takes 8 consecutive columns: one mask byte and 16-32
// bytes of grad per row (the scalar kernel above reads 2-8 bytes per thread).
template <typename T, typename acc_t>
__global__ void mask_grad_vec8_kernel(const T* __restrict__ grad, T* __restrict__ grad_masked,
                                      const uint8_t* __restrict__ mask, int64_t rows, int64_t cols,
                                      int64_t ld, int64_t chunk_rows, acc_t* __restrict__ partial) {
  struct alignas(sizeof(T) * 8) Vec {
    T v[8];
  };
  __shared__ acc_t sums[8][32 * 8 + 1];
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x) * 8;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = min(rows, r0 + chunk_rows);
  acc_t acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0;
  if (c0 < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      const Vec gv = *reinterpret_cast<const Vec*>(grad + r * cols + c0);
      const uint8_t bits = mask[(r * ld + c0) >> 3];
      Vec out;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        out.v[j] = ((bits >> j) & 1) ? gv.v[j] : T(0);
        acc[j] += static_cast<acc_t>(out.v[j]);
      }
      *reinterpret_cast<Vec*>(grad_masked + r * cols + c0) = out;
    }
  }
  if (partial == nullptr) return;
#pragma unroll
  for (int j = 0; j < 8; ++j) sums[threadIdx.y][threadIdx.x * 8 + j] = acc[j];
  __syncthreads();
  if (threadIdx.y == 0 && c0 < cols) {
    for (int j = 0; j < 8; ++j) {
      acc_t total = 0;
      for (int i = 0; i < 8; ++i) total += sums[i][threadIdx.x * 8 + j];  // fixed order
      partial[static_cast<int64_t>(blockIdx.y) * cols + c0 + j] = total;
    }
  }
}

__global__ void mask_unpack_kernel(const uint8_t* __restrict__ mask, int64_t rows, int64_t cols,
                                   int64_t ld, bool* __restrict__ out) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols;
    out[i] = core::relu_mask_bit(mask, r * ld + (i - r * cols));
  }
}

// Per-column set bits of the mask: thread per column, rows of one chunk; the
// chunks' partial counts are summed in order by sum_chunks_kernel.
__global__ void mask_count_kernel(const uint8_t* __restrict__ mask, int64_t rows, int64_t cols,
                                  int64_t ld, int64_t chunk_rows, int64_t* __restrict__ partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = min(rows, r0 + chunk_rows);
  int64_t n = 0;
  for (int64_t r = r0; r < r1; ++r) n += core::relu_mask_bit(mask, r * ld + c);
  partial[static_cast<int64_t>(blockIdx.y) * cols + c] = n;
}

// ---------------------------------------------------------------------------
// cuBLASLt path.

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// The fallback's products go through at::mm, which follows
// torch.use_deterministic_algorithms (and CUBLAS_WORKSPACE_CONFIG) like every
// other PyTorch GEMM: under deterministic mode the cuBLASLt path, whose
// algorithm choice is ours, is not used.
bool cublaslt_disabled() {
  return env_flag("TORCH_RELU_EXT_DISABLE_CUBLASLT") ||
         at::globalContext().deterministicAlgorithms();
}

// TORCH_RELU_EXT_VERBOSE=1 says why cuBLASLt declined a call.
bool declined(const char* why, int status) {
  if (env_flag("TORCH_RELU_EXT_VERBOSE")) {
    TORCH_WARN("relu_ext::fused_linear_relu: cuBLASLt path declined at ", why, " (cublasStatus ",
               status, "); using cuBLAS + fused epilogue");
  }
  return false;
}

struct LtDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDesc() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

uint32_t alignment_of(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && (v % a) != 0) a /= 2;
  return a;
}

#define LT_TRY(expr)                                               \
  do {                                                             \
    const cublasStatus_t st_ = (expr);                             \
    if (st_ != CUBLAS_STATUS_SUCCESS) return declined(#expr, st_); \
  } while (0)

// out[N, O] = relu(x[N, K] @ w[O, K]^T + bias) (+ mask) through one cuBLASLt
// call. Column-major view: D (O x N, ld O) = op(A) B with A = w (K x O, ld K)
// transposed and B = x (K x N, ld x.stride(0)). The epilogue's bias runs
// along D's rows (out features); its bit mask has leading dimension `ld` bits.
// Returns false, having written nothing that matters, when cuBLASLt declines.
bool cublaslt_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out,
                      Tensor* mask, int64_t ld) {
  const int64_t n = x.size(0), k = x.size(1), o = w.size(0);
  if (n == 0 || k == 0 || o == 0 || cublaslt_disabled()) return false;
  if (x.stride(1) != 1 || !w.is_contiguous()) return declined("layout", 0);
  cudaDataType_t dt;
  cublasComputeType_t compute;
  cudaDataType_t scale_t = CUDA_R_32F;
  switch (x.scalar_type()) {
    case at::kHalf:
      dt = CUDA_R_16F;
      compute = CUBLAS_COMPUTE_32F;
      break;
    case at::kBFloat16:
      dt = CUDA_R_16BF;
      compute = CUBLAS_COMPUTE_32F;
      break;
    case at::kFloat:
      dt = CUDA_R_32F;
      // Follow torch.backends.cuda.matmul.allow_tf32, as F.linear does.
      compute =
          at::globalContext().allowTF32CuBLAS() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case at::kDouble:
      dt = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      scale_t = CUDA_R_64F;
      break;
    default:
      return declined("dtype", 0);
  }
  LtDesc d;
  LT_TRY(cublasLtMatmulDescCreate(&d.desc, compute, scale_t));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT_TRY(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LT_TRY(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const bool has_bias = bias.defined();
  cublasLtEpilogue_t epi;
  if (mask != nullptr) {
    epi = has_bias ? CUBLASLT_EPILOGUE_RELU_AUX_BIAS : CUBLASLT_EPILOGUE_RELU_AUX;
  } else {
    epi = has_bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
  }
  LT_TRY(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (has_bias) {
    const void* bp = bias.data_ptr();
    LT_TRY(
        cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
  }
  if (mask != nullptr) {
    void* mp = mask->data_ptr();
    const int64_t ld_bits = ld;
    LT_TRY(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &mp,
                                          sizeof(mp)));
    LT_TRY(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_bits,
                                          sizeof(ld_bits)));
  }
  LT_TRY(cublasLtMatrixLayoutCreate(&d.a, dt, k, o, k));
  LT_TRY(cublasLtMatrixLayoutCreate(&d.b, dt, k, n, x.stride(0)));
  LT_TRY(cublasLtMatrixLayoutCreate(&d.c, dt, o, n, o));

  const size_t ws_size = 32u << 20;
  Tensor workspace = at::empty({static_cast<int64_t>(ws_size)}, x.options().dtype(at::kByte));
  LT_TRY(cublasLtMatmulPreferenceCreate(&d.pref));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                              &ws_size, sizeof(ws_size)));
  const uint32_t al_a = alignment_of(w.data_ptr()), al_b = alignment_of(x.data_ptr()),
                 al_c = alignment_of(out.data_ptr());
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                              &al_a, sizeof(al_a)));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                              &al_b, sizeof(al_b)));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                              &al_c, sizeof(al_c)));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                              &al_c, sizeof(al_c)));

  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t heur = {};
  int found = 0;
  LT_TRY(
      cublasLtMatmulAlgoGetHeuristic(handle, d.desc, d.a, d.b, d.c, d.c, d.pref, 1, &heur, &found));
  if (found == 0) return declined("heuristic (no algorithm)", 0);
  const float alpha_f = 1.f, beta_f = 0.f;
  const double alpha_d = 1.0, beta_d = 0.0;
  const void* alpha = scale_t == CUDA_R_64F ? static_cast<const void*>(&alpha_d) : &alpha_f;
  const void* beta = scale_t == CUDA_R_64F ? static_cast<const void*>(&beta_d) : &beta_f;
  LT_TRY(cublasLtMatmul(handle, d.desc, alpha, w.data_ptr(), d.a, x.data_ptr(), d.b, beta,
                        out.data_ptr(), d.c, out.data_ptr(), d.c, &heur.algo, workspace.data_ptr(),
                        ws_size, at::cuda::getCurrentCUDAStream()));
  return true;
}

// ---------------------------------------------------------------------------

template <bool kWithMask>
std::tuple<Tensor, Tensor> forward_impl(const char* op, const Tensor& input, const Tensor& weight,
                                        const std::optional<Tensor>& bias_opt) {
  detail::check_linear_args(op, input, weight, bias_opt);
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t out_f = weight.size(0);
  Tensor x = detail::as_rows(input);
  if (x.stride(1) != 1 || x.stride(0) < std::max<int64_t>(1, x.size(1))) x = x.contiguous();
  const int64_t rows = x.size(0);
  const int64_t ld = core::relu_mask_ld(out_f, /*padded=*/true);
  std::vector<int64_t> out_sizes = input.sizes().vec();
  out_sizes.back() = out_f;
  Tensor out = at::empty({rows, out_f}, input.options());
  Tensor mask;
  if (kWithMask) {
    // Zeroed: cuBLASLt writes only the bits of real columns, and the layout
    // promises zero padding (the memset is 1/128 of a bf16 output's bytes).
    mask = at::zeros({core::relu_mask_bytes(rows, out_f, true)}, input.options().dtype(at::kByte));
  }
  if (rows == 0 || out_f == 0) return {out.view(out_sizes), mask};
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const Tensor bias = has_bias ? bias_opt->contiguous() : Tensor();
  const Tensor w = weight.contiguous();

  if (!cublaslt_forward(x, w, bias, out, kWithMask ? &mask : nullptr, ld)) {
    at::mm_out(out, x, w.t());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, out.scalar_type(), "fused_linear_relu_cuda", [&] {
          const int64_t warps = rows * (ld / 32);
          bias_relu_mask_kernel<scalar_t, kWithMask>
              <<<grid_for(warps * 32), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                  out.data_ptr<scalar_t>(), has_bias ? bias.data_ptr<scalar_t>() : nullptr, rows,
                  out_f, ld,
                  kWithMask ? reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>()) : nullptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {out.view(out_sizes), mask};
}

Tensor fused_linear_relu_cuda(const Tensor& input, const Tensor& weight,
                              const std::optional<Tensor>& bias) {
  return std::get<0>(forward_impl<false>("relu_ext::fused_linear_relu", input, weight, bias));
}

std::tuple<Tensor, Tensor> fused_linear_relu_forward_cuda(const Tensor& input, const Tensor& weight,
                                                          const std::optional<Tensor>& bias) {
  return forward_impl<true>("relu_ext::fused_linear_relu_forward", input, weight, bias);
}

std::tuple<Tensor, Tensor, Tensor> fused_linear_relu_backward_cuda(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight, const Tensor& mask,
    std::array<bool, 3> output_mask) {
  detail::check_linear_backward_args("relu_ext::fused_linear_relu_backward", grad_output, input,
                                     weight, mask);
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t out_f = weight.size(0);
  const Tensor x = detail::as_rows(input);
  const Tensor g = detail::as_rows(grad_output).contiguous();
  const Tensor m = mask.contiguous();
  const int64_t rows = x.size(0);
  const int64_t ld = core::relu_mask_ld(out_f, true);
  Tensor gm = at::empty({rows, out_f}, g.options());
  Tensor grad_bias;
  if (output_mask[2]) grad_bias = at::empty({out_f}, weight.options());
  // Fixed chunks of rows (a function of the shape only): reproducible sums.
  const int64_t chunk_rows = std::max<int64_t>(64, ceil_div(rows, 1024));
  const int64_t chunks = rows == 0 ? 0 : ceil_div(rows, chunk_rows);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, g.scalar_type(), "fused_linear_relu_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        Tensor partial;
        if (output_mask[2] && chunks > 0) {
          partial =
              at::empty({chunks, out_f}, g.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        }
        if (chunks > 0 && out_f > 0) {
          const dim3 block(32, 8);
          acc_t* part_p = partial.defined() ? partial.data_ptr<acc_t>() : nullptr;
          const bool vec =
              out_f % 8 == 0 &&
              reinterpret_cast<uintptr_t>(g.data_ptr()) % (8 * sizeof(scalar_t)) == 0 &&
              reinterpret_cast<uintptr_t>(gm.data_ptr()) % (8 * sizeof(scalar_t)) == 0;
          if (vec) {
            const dim3 grid(static_cast<unsigned>(ceil_div(out_f, 256)),
                            static_cast<unsigned>(chunks));
            mask_grad_vec8_kernel<scalar_t, acc_t><<<grid, block, 0, stream>>>(
                g.data_ptr<scalar_t>(), gm.data_ptr<scalar_t>(), m.data_ptr<uint8_t>(), rows, out_f,
                ld, chunk_rows, part_p);
          } else {
            const dim3 grid(static_cast<unsigned>(ceil_div(out_f, 32)),
                            static_cast<unsigned>(chunks));
            mask_grad_kernel<scalar_t, acc_t><<<grid, block, 0, stream>>>(
                g.data_ptr<scalar_t>(), gm.data_ptr<scalar_t>(), m.data_ptr<uint8_t>(), rows, out_f,
                ld, chunk_rows, part_p);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (output_mask[2]) {
          if (chunks == 0) {
            grad_bias.zero_();
          } else if (out_f > 0) {
            sum_chunks_kernel<acc_t, scalar_t><<<grid_for(out_f), kThreads, 0, stream>>>(
                partial.data_ptr<acc_t>(), chunks, out_f, grad_bias.data_ptr<scalar_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        }
      });
  Tensor grad_input, grad_weight;
  if (output_mask[0]) grad_input = at::mm(gm, weight).view(input.sizes());
  if (output_mask[1]) grad_weight = at::mm(gm.t(), x);
  return {grad_input, grad_weight, grad_bias};
}

Tensor relu_mask_unpack_cuda(const Tensor& mask, c10::SymIntArrayRef sym_size) {
  c10::cuda::CUDAGuard guard(mask.device());
  const at::IntArrayRef size = C10_AS_INTARRAYREF_SLOW(sym_size);
  Tensor out = at::empty(size, mask.options().dtype(at::kBool));
  const auto [rows, cols] = detail::output_rows_cols(out);
  detail::check_mask_unpack_args("relu_ext::relu_mask_unpack", mask, rows, cols);
  if (rows * cols == 0) return out;
  const Tensor m = mask.contiguous();
  mask_unpack_kernel<<<grid_for(rows * cols), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      m.data_ptr<uint8_t>(), rows, cols, core::relu_mask_ld(cols, true), out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

Tensor relu_mask_count_cuda(const Tensor& mask, const Tensor& output) {
  c10::cuda::CUDAGuard guard(mask.device());
  const auto [rows, cols] = detail::output_rows_cols(output);
  detail::check_mask_unpack_args("relu_ext::relu_mask_count", mask, rows, cols);
  Tensor counts = at::zeros({cols}, mask.options().dtype(at::kLong));
  if (rows == 0 || cols == 0) return counts;
  const Tensor m = mask.contiguous();
  const int64_t chunk_rows = std::max<int64_t>(256, ceil_div(rows, 1024));
  const int64_t chunks = ceil_div(rows, chunk_rows);
  Tensor partial = at::empty({chunks, cols}, counts.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, 128)), static_cast<unsigned>(chunks));
  mask_count_kernel<<<grid, 128, 0, stream>>>(m.data_ptr<uint8_t>(), rows, cols,
                                              core::relu_mask_ld(cols, true), chunk_rows,
                                              partial.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_chunks_kernel<int64_t, int64_t><<<grid_for(cols), kThreads, 0, stream>>>(
      partial.data_ptr<int64_t>(), chunks, cols, counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CUDA, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cuda);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cuda);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cuda);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cuda);
  m.impl("relu_mask_count", &relu_mask_count_cuda);
}

}  // namespace torch_relu_ext::cuda
