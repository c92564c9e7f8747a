// The CPU matrix product (gemm.h): backend choice and the three backends.
#include "gemm.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "../../core/relu_mask.h"
#include "../fused_linear_relu_kernel.h"
#include "amx_bf16.h"
#include "dnnl_matmul.h"
#include "kernel_util.h"
#include "sgemm.h"

namespace torch_relu_ext::cpu::gemm {
namespace {

using at::Tensor;

// ---------------------------------------------------------------- the choice

// The setting: a forced backend, or none (auto).
using Mode = std::optional<Backend>;

constexpr Backend kBackends[] = {Backend::kOwn, Backend::kOneDNN, Backend::kDnnl, Backend::kAmx,
                                 Backend::kATen};

Mode parse_mode(const std::string& v) {
  if (v.empty() || v == "auto") return std::nullopt;
  for (const Backend b : kBackends) {
    if (v == name(b)) return b;
  }
  TORCH_CHECK(
      false,
      "torch_relu_ext: TORCH_RELU_EXT_CPU_GEMM must be 'auto', 'own', 'onednn', 'dnnl', 'amx' or "
      "'aten' "
      "(the CPU matrix product of fused_linear_relu), got '",
      v, "'");
}

// The setting: TORCH_RELU_EXT_CPU_GEMM, read on first use, or set_mode().
// Stored as the backend's value, kAutoCode for auto, kUnsetCode before.
constexpr int kUnsetCode = -2, kAutoCode = -1;
std::atomic<int> g_mode{kUnsetCode};

int encode(Mode m) { return m.has_value() ? static_cast<int>(*m) : kAutoCode; }

Mode mode() {
  int m = g_mode.load(std::memory_order_relaxed);
  if (m == kUnsetCode) {
    const char* env = std::getenv("TORCH_RELU_EXT_CPU_GEMM");
    m = encode(parse_mode(env != nullptr ? env : ""));
    g_mode.store(m, std::memory_order_relaxed);
  }
  return m == kAutoCode ? Mode() : Mode(static_cast<Backend>(m));
}

// Our AVX-512 kernels, where the AVX-512 loop tables run (ATen's capability,
// checked against the CPU: see dispatch.h); else null.
const sgemm::Kernels* own_kernels() {
  static const sgemm::Kernels* k = cpu_isa() == Isa::kAvx512 ? sgemm::avx512() : nullptr;
  return k;
}

// oneDNN through the dispatcher: its fused linear operator (Inductor's CPU
// freezing path) and whether this CPU runs its 16-bit kernels.
struct OneDNN {
  std::optional<c10::OperatorHandle> linear;
  bool bf16 = false;
  bool fp16 = false;
};

bool ask_bool(const char* op_name) {
  const auto op = c10::Dispatcher::singleton().findSchema({op_name, ""});
  return op.has_value() && op->typed<bool()>().call();
}

const OneDNN& onednn() {
  static const OneDNN d = [] {
    OneDNN r;
    if (!at::hasMKLDNN()) return r;
    r.linear = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (r.linear.has_value()) {
      r.bf16 = ask_bool("mkldnn::_is_mkldnn_bf16_supported");
      r.fp16 = ask_bool("mkldnn::_is_mkldnn_fp16_supported");
    }
    return r;
  }();
  return d;
}

// CPUID family (base + extended) of this CPU; 0 where not x86.
int cpu_family() {
#if defined(__x86_64__)
  unsigned a = 1, b = 0, c = 0, d = 0;
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d));
  const unsigned base = (a >> 8) & 0xF;
  return static_cast<int>(base == 0xF ? base + ((a >> 20) & 0xFF) : base);
#else
  return 0;
#endif
}

// The processors each rule of the auto choice was measured on
// (docs/cpu_gemm.md): AMD family 0x1A (Zen 5) with AVX-512, where MKL runs
// AVX2 code and our kernels won the gradient products; Intel family 6 with
// AVX-512, where MKL runs AVX-512 code and beat oneDNN on products of few
// rows. Every other CPU gets the libraries' rules only.
struct CpuClass {
  bool zen5_avx512;
  bool intel_avx512;
};

const CpuClass& cpu_class() {
  static const CpuClass c = [] {
    CpuClass r{false, false};
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool avx512 = own_kernels() != nullptr;
    const int family = cpu_family();
    r.zen5_avx512 = avx512 && __builtin_cpu_is("amd") && family == 0x1A;
    r.intel_avx512 = avx512 && __builtin_cpu_is("intel") && family == 6;
#endif
    return r;
  }();
  return c;
}

bool onednn_runs(at::ScalarType dtype) {
  const OneDNN& d = onednn();
  if (!d.linear.has_value()) return false;
  return dtype == at::kFloat || (dtype == at::kBFloat16 && d.bf16) ||
         (dtype == at::kHalf && d.fp16);
}

// oneDNN's library linked directly (dnnl_matmul.h): float32, and bfloat16
// where torch's oneDNN runs it (the same CPU test).
bool dnnl_runs(at::ScalarType dtype) {
  return dnnl::available() && (dtype == at::kFloat || (dtype == at::kBFloat16 && onednn().bf16));
}

bool can_run(Backend b, at::ScalarType dtype, int64_t m, int64_t n, int64_t k) {
  // Empty products (k = 0: zeros) are ATen's.
  if (m <= 0 || n <= 0 || k <= 0) return b == Backend::kATen;
  switch (b) {
    case Backend::kOwn:
      return dtype == at::kFloat && own_kernels() != nullptr;
    case Backend::kOneDNN:
      return onednn_runs(dtype);
    case Backend::kDnnl:
      return dnnl_runs(dtype);
    case Backend::kAmx:  // its epilogue is AVX-512 code: it follows ATen's capability as `own`
      return dtype == at::kBFloat16 && own_kernels() != nullptr && amx::available();
    case Backend::kATen:
      return true;
  }
  return false;
}

// Thresholds of the auto choice, from the measurements in docs/cpu_gemm.md.
// Below kTinyMacs multiply-adds oneDNN's fixed cost per call (~15 us:
// dispatch, primitive cache, weight descriptor) exceeds the product itself.
constexpr int64_t kTinyMacs = int64_t{1} << 20;
// Where MKL runs its AVX-512 code (Intel), it matched or beat oneDNN on
// float32 except on mid-size products (16-512 rows, >= 2^23 multiply-adds)
// and output-bound ones with reductions of >= 16 (oneDNN's ReLU post-op).
constexpr int64_t kMklSmallMacs = int64_t{1} << 23;
constexpr int64_t kFewRows = 16;
constexpr int64_t kManyRows = 512;
constexpr int64_t kShortK = 16;
// The dnnl backend on Intel with AVX-512 (oneDNN 3.2 linked directly, against
// MKL and the oneDNN inside torch): MKL matched it from 2^33 multiply-adds
// (float32); torch's newer oneDNN was faster on bfloat16 products above 2^28
// multiply-adds (its AMX kernels; at 2^28 they were even) and on single rows
// whose weight has >= 2^18 elements.
constexpr int64_t kHugeMacs = int64_t{1} << 33;
constexpr int64_t kDnnlBf16Macs = int64_t{1} << 28;
constexpr int64_t kGemvWeight = int64_t{1} << 18;
// Where our AMX bfloat16 forward (amx_bf16.h) beat both oneDNN routes on
// Intel with AMX: small weights at any row count, short reductions that
// write far more than they read, and masked forwards that write much (the
// libraries' routes pay a pass for the mask). It packs W on every call and
// loses on large weights and compute-bound products. Measurements behind
// each bound: docs/cpu_gemm.md (amx sections, session 8).
constexpr int64_t kAmxWeight = int64_t{1} << 17;
constexpr int64_t kAmxShortKWeight = int64_t{1} << 19;
constexpr int64_t kAmxShortK = 64, kAmxShortKRows = 64;
constexpr int64_t kAmxMidK = 128, kAmxMidKRows = 512;
constexpr int64_t kAmxMinOutputs = 32;
constexpr int64_t kAmxMaxK = 1024;
constexpr int64_t kAmxMaskedMinK = 32;
constexpr int64_t kAmxMaskedMaxK = 256;
constexpr int64_t kAmxMaskedManyRows = 8192;
constexpr int64_t kAmxMaskedWeight = int64_t{1} << 20;

bool amx_wins(Use use, int64_t m, int64_t n, int64_t k) {
  // Few outputs with long reductions waste most of a 32-column panel and
  // pack all of k per call: up to 26x slower (1 x 65536 -> 1).
  if (n < kAmxMinOutputs || k > kAmxMaxK) return false;
  if (n * k <= kAmxWeight) return true;
  if (n * k <= kAmxShortKWeight &&
      ((k <= kAmxShortK && m >= kAmxShortKRows) || (k <= kAmxMidK && m >= kAmxMidKRows))) {
    return true;
  }
  if (use != Use::kForwardMasked || k < kAmxMaskedMinK) return false;
  // With the mask: many rows of a weight of up to 2^20; products that write
  // at least as much as they read, with reductions of 32-256 (2048x479x1024
  // was even or slower).
  if (m >= kAmxMaskedManyRows && n * k <= kAmxMaskedWeight) return true;
  return k <= kAmxMaskedMaxK && (m + n) * k <= m * n;
}

// Our kernels' 8 x 48 tiles waste most of their work below 16 rows or 8
// columns, and packing B costs more than a small product.
bool own_fits(int64_t m, int64_t n) { return m >= 16 && n >= 8; }

// Whether a product writes so much more output than it reads input that it
// is bound by writing the output (the same test as oneDNN's post-op route).
bool output_bound(int64_t m, int64_t n, int64_t k) { return (m + n) * k * 4 <= m * n; }

// Its converse: a product that reads far more than it writes (both gradient
// products of an output-bound forward are such).
bool input_bound(int64_t m, int64_t n, int64_t k) { return (m + k) * n * 4 <= m * k; }

Backend choose_auto(Use use, at::ScalarType dtype, int64_t m, int64_t n, int64_t k) {
  if (m <= 0 || n <= 0 || k <= 0) return Backend::kATen;
  const CpuClass& cpu = cpu_class();
  if (use == Use::kGradInput || use == Use::kGradWeight) {
    // ATen's mm beat oneDNN's operator (which takes the weight as n x k and
    // copies transposed operands) on every gradient product measured; our
    // kernels beat MKL's AVX2 code on Zen 5. oneDNN linked directly beat
    // MKL on products that read far more than they write (the gradients of
    // output-bound forwards) and ATen's bfloat16 route on small products.
    if (dtype == at::kFloat && cpu.zen5_avx512 && own_fits(m, n)) return Backend::kOwn;
    if (cpu.intel_avx512 && dnnl_runs(dtype) &&
        (input_bound(m, n, k) || (dtype == at::kBFloat16 && m * n * k < kMklSmallMacs))) {
      return Backend::kDnnl;
    }
    return Backend::kATen;
  }
  // Small bfloat16 weights on Intel with AMX, and masked forwards that write
  // much: our tiles beat both oneDNN routes (their fixed costs per call, and
  // their extra pass for the mask).
  if (cpu.intel_avx512 && amx_wins(use, m, n, k) && can_run(Backend::kAmx, dtype, m, n, k)) {
    return Backend::kAmx;
  }
  if (!onednn_runs(dtype)) return Backend::kATen;
  const int64_t macs = m * n * k;
  if (cpu.intel_avx512 && dnnl_runs(dtype)) {
    // oneDNN linked directly: no fixed cost per call, so it beat oneDNN's
    // operator and MKL on small and mid-size products; MKL stays ahead below
    // 16 rows (float32), the newer oneDNN inside torch on large bfloat16
    // products and on single rows with a large weight.
    if (dtype == at::kFloat) {
      return m < kFewRows || macs < kTinyMacs || macs >= kHugeMacs ? Backend::kATen
                                                                   : Backend::kDnnl;
    }
    return macs > kDnnlBf16Macs || (m == 1 && n * k >= kGemvWeight) ? Backend::kOneDNN
                                                                    : Backend::kDnnl;
  }
  if (dtype == at::kFloat) {
    const bool masked = use == Use::kForwardMasked;
    // The training forward of output-bound shapes on Zen 5: our kernels
    // write the output and its mask once, where MKL runs AVX2 code and
    // oneDNN's route needs a second pass over the output for the mask.
    if (masked && cpu.zen5_avx512 && own_fits(m, n) && output_bound(m, n, k)) return Backend::kOwn;
    if (macs < kTinyMacs) return Backend::kATen;
    if (cpu.intel_avx512) {
      // oneDNN's post-op route pays only without the mask's extra pass.
      const bool mid = m >= kFewRows && m <= kManyRows && macs >= kMklSmallMacs;
      const bool post_op = !masked && output_bound(m, n, k) && k >= kShortK;
      if (!mid && !post_op) return Backend::kATen;
    }
  }
  return Backend::kOneDNN;
}

// ---------------------------------------------------------------- backends

// C (m x n, row-major, ldc) = or += a x b with our kernels; ep is applied to
// the finished result. Threads split C's rows in whole register tiles (mask
// bytes never straddle threads) and, when row tiles are fewer than twice the
// threads, its columns in whole panels (only where mask bytes cannot
// straddle column groups). Each element is reduced in the same order
// whatever the split: results do not depend on the thread count. k > 0.
void own_gemm(const sgemm::Kernels& kern, sgemm::View a, sgemm::View b, int64_t m, int64_t n,
              int64_t k, float* c, int64_t ldc, bool accumulate, const sgemm::Epilogue* ep) {
  thread_local Scratch<float> packed_b_buf;
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
        thread_local Scratch<float> a_buf;
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

sgemm::View view_of(const Tensor& t) {
  return sgemm::View{t.data_ptr<float>(), t.stride(0), t.stride(1)};
}

Tensor own_mm(const Tensor& a, const Tensor& b, Tensor c, bool accumulate, const Epilogue* ep) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  if (!c.defined()) c = at::empty({m, n}, a.options());
  sgemm::Epilogue sep{nullptr, true, nullptr, n};
  Tensor bias;
  if (ep != nullptr) {
    if (ep->bias.defined()) {
      bias = ep->bias.contiguous();
      sep.bias = bias.data_ptr<float>();
    }
    sep.mask = ep->mask;
    // The kernels OR the mask bits into zeroed bytes.
    if (sep.mask != nullptr) std::memset(sep.mask, 0, core::relu_mask_bytes(m, n, false));
  }
  own_gemm(*own_kernels(), view_of(a), view_of(b), m, n, k, c.data_ptr<float>(), n, accumulate,
           ep != nullptr ? &sep : nullptr);
  return c;
}

// ReLU (+ bias when given, + mask bits when asked) from a contiguous rows x n
// block `in` into `out` (may be `in`), whose first row is row r0 of the whole
// output; split among threads in 8-row groups (mask bytes are never shared).
void relu_pass(const Tensor& in, const Tensor& out, const Tensor& bias, uint8_t* mask, int64_t r0) {
  const int64_t rows = in.size(0), n = in.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "relu_pass", [&] {
    const FusedLinearReluKernel<scalar_t>& lt = fused_linear_relu_kernels().get<scalar_t>();
    const auto fn = mask != nullptr ? lt.bias_relu_mask : lt.bias_relu;
    const auto fn_bits = mask != nullptr ? lt.relu_mask : lt.relu;
    const scalar_t* in_p = in.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    const scalar_t* bias_p = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 8 * n));
    at::parallel_for(0, (rows + 7) / 8, grain, [&](int64_t g0, int64_t g1) {
      const int64_t s0 = g0 * 8, s1 = std::min(rows, g1 * 8);
      uint8_t* m = mask != nullptr ? mask + ((r0 + s0) * n) / 8 : nullptr;
      if (bias_p != nullptr) {
        fn(in_p + s0 * n, out_p + s0 * n, bias_p, s1 - s0, n, m);
      } else {
        fn_bits(in_p + s0 * n, out_p + s0 * n, (s1 - s0) * n, m);
      }
    });
  });
}

// ATen's product; with ep, one row block at a time (block_rows): the BLAS
// product writes the block (using every thread), then the epilogue runs over
// it while it is still in cache.
Tensor aten_mm(const Tensor& a, const Tensor& b, Tensor c, bool accumulate, const Epilogue* ep) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  if (!c.defined()) {
    c = at::empty({m, n}, a.options());
    TORCH_INTERNAL_ASSERT(!accumulate);
  }
  if (ep == nullptr) {
    if (accumulate) {
      c.addmm_(a, b);
    } else {
      at::mm_out(c, a, b);
    }
    return c;
  }
  const Tensor bias = ep->bias.defined() ? ep->bias.contiguous() : Tensor();
  // 16-bit: one product of all rows with the bias in it (addmm), exactly
  // eager's F.linear. The bias added afterwards, a second rounding of a sum
  // that nearly cancels flipped its sign and the mask bit; and a product of
  // fewer rows is another oneDNN product inside ATen, whose AMX kernels can
  // put NaN into a finite row next to an Inf one where eager's does not.
  const bool sixteen_bit = a.element_size() == 2;
  const bool bias_in_product = bias.defined() && sixteen_bit;
  const int64_t brows = sixteen_bit ? m : block_rows(n, k, a.element_size());
  for (int64_t r0 = 0; r0 < m; r0 += brows) {
    const int64_t r1 = std::min(m, r0 + brows);
    Tensor cb = c.narrow(0, r0, r1 - r0);
    if (bias_in_product) {
      at::addmm_out(cb, bias, a.narrow(0, r0, r1 - r0), b);
    } else {
      at::mm_out(cb, a.narrow(0, r0, r1 - r0), b);
    }
    relu_pass(cb, cb, bias_in_product ? Tensor() : bias, ep->mask, r0);
  }
  return c;
}

// A 2-D operand's strides as oneDNN takes them (a size-1 dimension's stride
// is free), and whether oneDNN can describe them: one unit stride and the
// other at least its extent (no overlapping or broadcast rows).
struct OneDNNStrides {
  int64_t rows, cols;
  bool plain;
};

OneDNNStrides onednn_strides(const Tensor& t) {
  const int64_t r = t.size(0), c = t.size(1);
  int64_t rs = t.stride(0), cs = t.stride(1);
  if (r == 1) rs = c * std::max<int64_t>(cs, 1);
  if (c == 1) cs = 1;
  return {rs, cs, (cs == 1 && rs >= c) || (rs == 1 && cs >= r)};
}

Tensor onednn_operand(const Tensor& t) { return onednn_strides(t).plain ? t : t.contiguous(); }

// oneDNN's fused linear, y = a @ w^T + bias with post-op `attr` ("none" or
// "relu"), called boxed through the dispatcher, below autograd (a kernel's
// inner call records nothing). a and w: onednn_operand's.
Tensor onednn_linear(const Tensor& a, const Tensor& w, const Tensor& bias, const char* attr) {
  at::AutoDispatchBelowADInplaceOrView guard;
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(a);
  stack.emplace_back(w);
  stack.emplace_back(bias.defined() ? c10::IValue(bias) : c10::IValue());
  stack.emplace_back(std::string(attr));
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back(std::string(""));
  try {
    onednn().linear->callBoxed(&stack);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false,
                "fused_linear_relu: oneDNN's linear (CPU product backend 'onednn') failed for ",
                a.size(0), "x", a.size(1), " @ ", w.size(1), "x", w.size(0), ": ",
                e.what_without_backtrace());
  }
  return std::move(stack[0]).toTensor();
}

// Largest |v| of a contiguous tensor (+Inf if any is NaN or infinite), in
// fixed chunks (the result is exact: no dependence on the split).
float max_abs(const Tensor& t) {
  float result = 0.0f;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "max_abs", [&] {
    const auto fn = fused_linear_relu_kernels().get<scalar_t>().max_abs;
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    const int64_t n = t.numel();
    constexpr int64_t kChunk = 1 << 16;
    std::vector<float> part((n + kChunk - 1) / kChunk, 0.0f);
    at::parallel_for(0, static_cast<int64_t>(part.size()), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        part[c] = fn(p + c * kChunk, std::min(kChunk, n - c * kChunk));
      }
    });
    for (float v : part) result = std::max(result, v);
  });
  return result;
}

// Whether a @ w^T + bias is NaN-free whatever the order of summation, given
// max|a| and max|w| (+Inf when not finite): every input finite and every
// partial sum bounded by k max|a| max|w| + max|b|, far below float's overflow
// (oneDNN accumulates 16-bit types in float). Then oneDNN's ReLU post-op
// (which maps NaN to 0) equals ours.
bool nan_free(float a_max, float w_max, int64_t k, const Tensor& bias) {
  const double bound =
      static_cast<double>(k) * a_max * w_max + (bias.defined() ? max_abs(bias) : 0.0);
  return bound < 1e37;
}

// The mask bits of a contiguous output that a ReLU post-op wrote (out > 0:
// the pre-activation was not <= 0 and nothing was NaN).
void mask_of_output(const Tensor& t, uint8_t* mask) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "mask", [&] {
    const auto fn = fused_linear_relu_kernels().get<scalar_t>().positive_mask;
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    const int64_t total = t.numel();
    constexpr int64_t kChunk = 1 << 15;  // elements: a multiple of 8 (mask bytes)
    at::parallel_for(0, (total + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        fn(p + c * kChunk, std::min(kChunk, total - c * kChunk), mask + c * kChunk / 8);
      }
    });
  });
}

// Whether a contiguous tensor holds Inf or NaN.
bool has_non_finite(const Tensor& t) {
  return max_abs(t) == std::numeric_limits<float>::infinity();
}

// Whether oneDNN's ReLU post-op may run for a @ w^T + bias with epilogue ep:
// where scanning the inputs costs less than what the post-op saves, and the
// scan shows no NaN can arise (nan_free). Without the mask it saves our pass
// (a read and a write of the output): (m + n) k <= 2 m n. With it, the mask
// is read off the output: per block in cache (`mask_per_block`) that saves
// the pass's write, (m + n) k <= m n; over the whole output afterwards it
// pays only on output-bound shapes. kATen:
// a 16-bit input is not finite (guard: the AMX fault below); the scan then
// clears `guard` where it found the inputs finite.
enum class PostOp { kYes, kNo, kATen };

PostOp relu_post_op(const Tensor& a, const Tensor& w, const Tensor& bias, const Epilogue& ep,
                    bool mask_per_block, bool& guard) {
  const int64_t m = a.size(0), k = a.size(1), n = w.size(0);
  const bool scans_pay = ep.mask == nullptr ? (m + n) * k <= 2 * m * n
                         : mask_per_block   ? (m + n) * k <= m * n
                                            : output_bound(m, n, k);
  // float16: oneDNN's ReLU runs on the float sum before rounding, so a
  // negative sum that rounds to -0.0 would come out +0.0 (torch.relu keeps it).
  if (a.scalar_type() == at::kHalf) return PostOp::kNo;
  if (!scans_pay || !a.is_contiguous() || !w.is_contiguous()) return PostOp::kNo;
  const float a_max = max_abs(a), w_max = max_abs(w);
  const float inf = std::numeric_limits<float>::infinity();
  if (guard && !(a_max < inf && w_max < inf)) return PostOp::kATen;
  guard = false;  // finite inputs: nothing for the AMX fault to spread
  return nan_free(a_max, w_max, k, bias) ? PostOp::kYes : PostOp::kNo;
}

// oneDNN writes a new tensor: without an epilogue it is the result (or is
// added/copied into c). With one, the bias goes into oneDNN's product (one
// rounding, as eager's addmm), and either
// - oneDNN's ReLU post-op runs too, where the inputs cannot make a NaN
//   (nan_free) and scanning them costs far less than a pass over the output:
//   the mask is then read off the output (out > 0); or
// - our ReLU + mask pass runs over oneDNN's result, per row block
//   (block_rows) while the block is still in cache.
// 16-bit products: oneDNN's AMX kernels put NaN into finite rows that share a
// tile with a row holding Inf (docs/cpu_gemm.md), so where an input is not
// finite ATen's product runs instead, as eager's F.linear does. Any Inf or
// NaN input makes some product element non-finite, so the check reads the
// inputs where the post-op route scans them anyway, and otherwise each
// product block while it is in cache (then a non-finite block, rare, means
// the product is redone by ATen).
Tensor onednn_mm(const Tensor& a_in, const Tensor& b, Tensor c, bool accumulate,
                 const Epilogue* ep) {
  const Tensor a = onednn_operand(a_in);
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const Tensor w = onednn_operand(b.t());  // n x k, as oneDNN's linear takes its weight
  const Tensor bias = ep != nullptr && ep->bias.defined() ? ep->bias.contiguous() : Tensor();
  bool guard = a.element_size() == 2;
  const auto product = [&](int64_t r0, int64_t rows) {
    return onednn_linear(a.narrow(0, r0, rows), w, bias, "none");
  };
  if (ep == nullptr) {
    Tensor t = product(0, m);
    if (guard && has_non_finite(t)) return aten_mm(a, b, std::move(c), accumulate, nullptr);
    if (!c.defined()) return t;
    if (accumulate) {
      c.add_(t);
    } else {
      c.copy_(t);
    }
    return c;
  }
  if (!c.defined()) {
    const PostOp po = relu_post_op(a, w, bias, *ep, false, guard);
    if (po == PostOp::kATen) return aten_mm(a, b, std::move(c), false, ep);
    if (po == PostOp::kYes) {
      Tensor t = onednn_linear(a, w, bias, "relu");
      if (ep->mask != nullptr) mask_of_output(t, ep->mask);
      return t;
    }
  }
  const int64_t brows = block_rows(n, k, a.element_size());
  if (m <= brows && !c.defined()) {
    Tensor t = product(0, m);
    if (guard && has_non_finite(t)) return aten_mm(a, b, Tensor(), false, ep);
    relu_pass(t, t, Tensor(), ep->mask, 0);
    return t;
  }
  if (!c.defined()) c = at::empty({m, n}, a.options());
  for (int64_t r0 = 0; r0 < m; r0 += brows) {
    const int64_t r1 = std::min(m, r0 + brows);
    const Tensor t = product(r0, r1 - r0);
    if (guard && has_non_finite(t)) return aten_mm(a, b, std::move(c), false, ep);
    relu_pass(t, c.narrow(0, r0, r1 - r0), Tensor(), ep->mask, r0);
  }
  return c;
}

// A 2-D tensor as a oneDNN operand: plain strides with one unit stride (a
// size-1 dimension counts as either); anything else is copied contiguous
// into `keep` first.
dnnl::Operand dnnl_operand(const Tensor& t, Tensor& keep) {
  const OneDNNStrides s = onednn_strides(t);
  if (!s.plain) {
    keep = t.contiguous();
    return {keep.const_data_ptr(), t.size(1), 1};
  }
  return {t.const_data_ptr(), s.rows, s.cols};
}

// oneDNN's matmul, called directly (dnnl_matmul.h): writes into c (or its
// row blocks) itself, so the ReLU + mask pass after it runs on each block in
// cache with no copy, and the primitive is ours to keep (a call costs a few
// microseconds, where the dispatcher's operator costs ~15). The ReLU post-op
// and the 16-bit guard follow onednn_mm's rules.
Tensor dnnl_mm(const Tensor& a, const Tensor& b, Tensor c, bool accumulate, const Epilogue* ep) {
  // A thread that has not run an ATen parallel loop yet still has OpenMP's
  // default thread count: take torch's (oneDNN runs on OpenMP's).
  at::internal::lazy_init_num_threads();
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const dnnl::Type type = a.scalar_type() == at::kBFloat16 ? dnnl::Type::kBF16 : dnnl::Type::kF32;
  Tensor a_keep, b_keep;
  const dnnl::Operand ao = dnnl_operand(a, a_keep), bo = dnnl_operand(b, b_keep);
  const Tensor bias = ep != nullptr && ep->bias.defined() ? ep->bias.contiguous() : Tensor();
  const int64_t es = a.element_size();
  // Rows r0.. of the product (+ bias, + ReLU post-op) into out.
  const auto product = [&](int64_t r0, const Tensor& out, bool relu, bool acc) {
    const dnnl::Operand ar{static_cast<const char*>(ao.data) + r0 * ao.row_stride * es,
                           ao.row_stride, ao.col_stride};
    const std::string err = dnnl::matmul(type, out.size(0), n, k, ar, bo,
                                         bias.defined() ? bias.const_data_ptr() : nullptr,
                                         out.data_ptr(), out.stride(0), relu, acc);
    TORCH_CHECK(err.empty(),
                "fused_linear_relu: oneDNN's matmul (CPU product backend 'dnnl') failed for ",
                out.size(0), "x", k, " @ ", k, "x", n, ": ", err);
  };
  bool guard = es == 2;
  if (ep == nullptr) {
    // 16-bit accumulation: the product alone could not be checked, and adding
    // it afterwards would round twice; ATen's addmm_ does neither (no caller
    // reaches this today: 16-bit gradients are one block).
    if (guard && accumulate) return aten_mm(a, b, std::move(c), true, nullptr);
    if (!c.defined()) c = at::empty({m, n}, a.options());
    product(0, c, false, accumulate);
    if (guard && has_non_finite(c)) return aten_mm(a, b, std::move(c), false, nullptr);
    return c;
  }
  PostOp po = PostOp::kNo;
  if (!c.defined()) {
    c = at::empty({m, n}, a.options());
    po = relu_post_op(a, b.t(), bias, *ep, true, guard);
    if (po == PostOp::kATen) return aten_mm(a, b, std::move(c), false, ep);
  }
  // Per row block (block_rows), while it is in cache: our ReLU + mask pass,
  // or, after the post-op, the mask read off the block. (Blocks of 1 MiB and
  // 512 KiB were no faster: docs/cpu_gemm.md.)
  const int64_t brows = block_rows(n, k, es);
  for (int64_t r0 = 0; r0 < m; r0 += brows) {
    const Tensor cb = c.narrow(0, r0, std::min(m, r0 + brows) - r0);
    product(r0, cb, po == PostOp::kYes, false);
    if (po == PostOp::kYes) {
      if (ep->mask != nullptr) mask_of_output(cb, ep->mask + r0 * n / 8);
      continue;
    }
    if (guard && has_non_finite(cb)) return aten_mm(a, b, std::move(c), false, ep);
    relu_pass(cb, cb, Tensor(), ep->mask, r0);
  }
  return c;
}

// Our AMX bfloat16 forward (amx_bf16.h): W packed per call (in parallel),
// then each thread runs whole 32-row blocks (amx::kRows), whose bias, ReLU
// and mask bits are applied to each finished block of rows while its
// accumulators are in cache: no pass over the output afterwards, no scan of the inputs (NaN and Inf
// stay in their rows; the tiles read subnormal inputs as zero), and no dependence on the thread
// count.
Tensor amx_mm(const Tensor& a, const Tensor& b, Tensor c, const Epilogue& ep) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const auto unit_columns = [](const Tensor& t) { return t.size(1) == 1 || t.stride(1) == 1; };
  const Tensor x = unit_columns(a) ? a : a.contiguous();
  const Tensor w = unit_columns(b.t()) ? b.t() : b.t().contiguous();  // n x k
  if (!c.defined()) c = at::empty({m, n}, a.options());
  TORCH_INTERNAL_ASSERT(c.is_contiguous());
  const int64_t panels = (n + amx::kPanel - 1) / amx::kPanel;
  // The packed weight: in a buffer this thread keeps (up to 64 MiB), else a
  // fresh one.
  constexpr int64_t kKeptBytes = int64_t{64} << 20;
  const int64_t packed_elems = amx::packed_elems(n, k);
  thread_local Scratch<uint16_t> kept;
  Tensor fresh;
  uint16_t* packed = nullptr;
  if (packed_elems * 2 <= kKeptBytes) {
    packed = kept.get(packed_elems);
  } else {
    fresh = at::empty({packed_elems}, a.options());
    packed = reinterpret_cast<uint16_t*>(fresh.data_ptr());
  }
  const auto* wp = static_cast<const uint16_t*>(w.const_data_ptr());
  const int64_t ldw = n == 1 ? k : w.stride(0);
  at::parallel_for(
      0, panels, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)),
      [&](int64_t p0, int64_t p1) { amx::pack_weight(wp, ldw, n, k, p0, p1, packed); });
  // The bias in float, padded with zeros to whole panels (a buffer this
  // thread keeps: two ATen calls cost as much as a small product).
  thread_local Scratch<float> bias_buf;
  float* bp = nullptr;
  if (ep.bias.defined()) {
    const Tensor bias = ep.bias.contiguous();
    const c10::BFloat16* src = bias.const_data_ptr<c10::BFloat16>();
    bp = bias_buf.get(panels * amx::kPanel);
    for (int64_t j = 0; j < panels * amx::kPanel; ++j)
      bp[j] = j < n ? static_cast<float>(src[j]) : 0.0f;
  }
  const auto* xp = static_cast<const uint16_t*>(x.const_data_ptr());
  const int64_t ldx = m == 1 ? k : x.stride(0);
  auto* out = static_cast<uint16_t*>(c.data_ptr());
  constexpr int64_t kRows = amx::kRows;
  at::parallel_for(0, (m + kRows - 1) / kRows, 1, [&](int64_t t0, int64_t t1) {
    amx::forward_rows(xp, ldx, t0 * kRows, std::min(m, t1 * kRows), n, k, packed, bp, out, ep.mask);
  });
  return c;
}

}  // namespace

const char* name(Backend backend) {
  switch (backend) {
    case Backend::kOwn:
      return "own";
    case Backend::kOneDNN:
      return "onednn";
    case Backend::kDnnl:
      return "dnnl";
    case Backend::kAmx:
      return "amx";
    case Backend::kATen:
      return "aten";
  }
  return "?";
}

Backend choose(Use use, at::ScalarType dtype, int64_t m, int64_t n, int64_t k) {
  const Mode md = mode();
  const bool gradient = use == Use::kGradInput || use == Use::kGradWeight;
  if (md.has_value() && can_run(*md, dtype, m, n, k) && !(*md == Backend::kAmx && gradient)) {
    return *md;
  }
  return choose_auto(use, dtype, m, n, k);
}

Tensor mm(Backend backend, const Tensor& a, const Tensor& b, Tensor c, bool accumulate,
          const Epilogue* ep) {
  TORCH_INTERNAL_ASSERT(ep == nullptr || !accumulate);
  TORCH_INTERNAL_ASSERT(can_run(backend, a.scalar_type(), a.size(0), b.size(1), a.size(1)));
  switch (backend) {
    case Backend::kOwn:
      return own_mm(a, b, std::move(c), accumulate, ep);
    case Backend::kOneDNN:
      return onednn_mm(a, b, std::move(c), accumulate, ep);
    case Backend::kDnnl:
      return dnnl_mm(a, b, std::move(c), accumulate, ep);
    case Backend::kAmx:
      TORCH_INTERNAL_ASSERT(ep != nullptr, "amx runs the forward only");
      return amx_mm(a, b, std::move(c), *ep);
    case Backend::kATen:
      break;
  }
  return aten_mm(a, b, std::move(c), accumulate, ep);
}

// ~4 MiB of output keeps the pass after the product in cache; fewer than 256
// rows, or than the reduction depth, cost the products their efficiency.
int64_t block_rows(int64_t n, int64_t k, int64_t elem_size) {
  constexpr int64_t kBlockBytes = 4 * 1024 * 1024;
  constexpr int64_t kMinBlockRows = 256;
  const int64_t rows = kBlockBytes / std::max<int64_t>(1, n * elem_size);
  return (std::max({kMinBlockRows, rows, k}) + 7) / 8 * 8;
}

void set_mode(const std::string& setting) {
  g_mode.store(encode(parse_mode(setting)), std::memory_order_relaxed);
}

std::string describe() {
  const Mode md = mode();
  std::ostringstream s;
  s << (md.has_value() ? name(*md) : "auto");
  // The choice for a few representative layers (rows x in x out, as
  // benchmarks name them), per use.
  struct Probe {
    const char* what;
    Use use;
    at::ScalarType dtype;
    int64_t rows, in, out;
  };
  const Probe probes[] = {
      {"forward float32 2048x1024x1024", Use::kForward, at::kFloat, 2048, 1024, 1024},
      {"forward float32 4x1024x1024", Use::kForward, at::kFloat, 4, 1024, 1024},
      {"forward bfloat16 2048x1024x1024", Use::kForward, at::kBFloat16, 2048, 1024, 1024},
      {"forward bfloat16 16x1024x1024", Use::kForward, at::kBFloat16, 16, 1024, 1024},
      {"forward bfloat16 2048x256x64", Use::kForward, at::kBFloat16, 2048, 256, 64},
      {"forward_masked float32 8192x64x1024", Use::kForwardMasked, at::kFloat, 8192, 64, 1024},
      {"forward_masked bfloat16 8192x64x1024", Use::kForwardMasked, at::kBFloat16, 8192, 64, 1024},
      {"grad_input float32 2048x1024x1024", Use::kGradInput, at::kFloat, 2048, 1024, 1024},
      {"grad_weight float32 2048x1024x1024", Use::kGradWeight, at::kFloat, 2048, 1024, 1024},
      {"grad_input bfloat16 2048x1024x1024", Use::kGradInput, at::kBFloat16, 2048, 1024, 1024},
  };
  const char* sep = ": ";
  for (const Probe& p : probes) {
    // The product's m x n x k: forward x @ W^T, grad_input G @ W, grad_weight G^T @ x.
    const int64_t m = p.use == Use::kGradWeight ? p.out : p.rows;
    const int64_t n = p.use == Use::kGradWeight || p.use == Use::kGradInput ? p.in : p.out;
    const int64_t k = p.use == Use::kGradWeight ? p.rows : p.use == Use::kGradInput ? p.out : p.in;
    s << sep << p.what << " " << name(choose(p.use, p.dtype, m, n, k));
    sep = ", ";
  }
  s << "; dnnl: " << dnnl::describe() << "; amx: " << (amx::available() ? "yes" : "no");
  return s.str();
}

}  // namespace torch_relu_ext::cpu::gemm
