// GoogleTest suite of the LibTorch library: the ATen-free core, and the
// operators called through the public C++ API (dispatcher, C++ autograd).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "core/relu_mask.h"
#include "core/relu_math.h"
#include "torch_relu_ext/ops.h"

namespace core = torch_relu_ext::core;

TEST(Core, Pack8Unpack8RoundTrip) {
  for (int v = 0; v < 256; ++v) {
    uint8_t flags[8];
    for (int i = 0; i < 8; ++i) flags[i] = (v >> i) & 1;
    EXPECT_EQ(core::pack8(flags), v);
    const uint64_t w = core::unpack8(static_cast<uint8_t>(v));
    for (int i = 0; i < 8; ++i) {
      EXPECT_EQ(((w >> (8 * i)) & 0xff) != 0, ((v >> i) & 1) != 0);
    }
  }
}

TEST(Core, MaskLayout) {
  EXPECT_EQ(core::relu_mask_ld(10, false), 10);
  EXPECT_EQ(core::relu_mask_ld(10, true), 128);
  EXPECT_EQ(core::relu_mask_ld(128, true), 128);
  EXPECT_EQ(core::relu_mask_ld(129, true), 256);
  EXPECT_EQ(core::relu_mask_bytes(3, 10, false), 4);  // 30 bits
  EXPECT_EQ(core::relu_mask_bytes(3, 10, true), 48);  // 3 rows of 128 bits
  const uint8_t mask[2] = {0b10000001, 0b00000010};
  EXPECT_TRUE(core::relu_mask_bit(mask, 0));
  EXPECT_FALSE(core::relu_mask_bit(mask, 1));
  EXPECT_TRUE(core::relu_mask_bit(mask, 7));
  EXPECT_TRUE(core::relu_mask_bit(mask, 9));
}

TEST(Core, ElementMathMatchesPyTorchConventions) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::signbit(core::relu(-0.0f)));  // torch.relu(-0.0) == -0.0
  EXPECT_TRUE(std::isnan(core::relu(nan)));
  EXPECT_EQ(core::relu(-2.0f), 0.0f);
  EXPECT_TRUE(core::relu_passes(nan));  // threshold_backward passes NaN
  EXPECT_FALSE(core::relu_passes(0.0f));
  EXPECT_FALSE(core::relu_passes(-0.0f));
  EXPECT_TRUE(core::relu_passes(1e-30f));
  EXPECT_FALSE(core::active(nan));
  EXPECT_EQ(core::prelu(-2.0f, 0.25f), -0.5f);
  EXPECT_EQ(core::prelu(3.0f, 0.25f), 3.0f);
  EXPECT_TRUE(std::signbit(core::prelu(-0.0f, 0.25f)));
  EXPECT_EQ(core::prelu_grad_input(-1.0f, 0.25f, 4.0f), 1.0f);
  EXPECT_EQ(core::prelu_grad_weight(-1.0f, 4.0f), -4.0f);
  EXPECT_EQ(core::prelu_grad_weight(1.0f, 4.0f), 0.0f);
}

TEST(Ops, FusedLinearReluForwardBackward) {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const auto opt = at::TensorOptions().dtype(dtype);
    auto x = at::randn({2, 37, 13}, opt).requires_grad_();
    auto w = at::randn({21, 13}, opt).requires_grad_();
    auto b = at::randn({21}, opt).requires_grad_();
    auto y = torch_relu_ext::fused_linear_relu(x, w, b);
    auto xr = x.detach().requires_grad_();
    auto wr = w.detach().requires_grad_();
    auto br = b.detach().requires_grad_();
    auto ref = at::relu(at::linear(xr, wr, br));
    const double tol = dtype == at::kFloat ? 1e-5 : 1e-12;
    EXPECT_TRUE(at::allclose(y, ref, tol, tol));
    auto g = at::randn_like(y);
    auto ours = torch::autograd::grad({y}, {x, w, b}, {g});
    auto theirs = torch::autograd::grad({ref}, {xr, wr, br}, {g});
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(at::allclose(ours[i], theirs[i], tol, tol)) << i;
  }
}

TEST(Ops, MaskKeptForBackwardIsOneBitPerElement) {
  auto x = at::randn({10, 6});
  auto w = at::randn({7, 6});
  auto [out, mask] = torch_relu_ext::detail::fused_linear_relu_forward(x, w);
  EXPECT_EQ(mask.scalar_type(), at::kByte);
  EXPECT_EQ(mask.numel(), (10 * 7 + 7) / 8);
  auto unpacked = torch_relu_ext::detail::relu_mask_unpack(mask, {10, 7});
  EXPECT_TRUE(at::equal(unpacked, at::linear(x, w) > 0));
}

TEST(Ops, DeadPreluCountsAndGradients) {
  auto x = at::randn({4, 5, 3, 3}).requires_grad_();
  auto w = at::rand({5}).requires_grad_();
  auto [out, counts] = torch_relu_ext::dead_prelu(x, w);
  EXPECT_TRUE(at::equal(out, at::prelu(x, w)));
  EXPECT_TRUE(at::equal(counts, (x > 0).sum({0, 2, 3})));
  auto g = at::randn_like(out);
  auto ours = torch::autograd::grad({out}, {x, w}, {g});
  auto xr = x.detach().requires_grad_();
  auto wr = w.detach().requires_grad_();
  auto theirs = torch::autograd::grad({at::prelu(xr, wr)}, {xr, wr}, {g});
  EXPECT_TRUE(at::equal(ours[0], theirs[0]));
  EXPECT_TRUE(at::allclose(ours[1], theirs[1], 1e-5, 1e-5));
}

TEST(Ops, DoubleBackwardThroughCppAutograd) {
  auto x = at::randn({6, 4}, at::kDouble).requires_grad_();
  auto w = at::randn({3, 4}, at::kDouble).requires_grad_();
  auto y = torch_relu_ext::fused_linear_relu(x, w);
  auto gx =
      torch::autograd::grad({y.sum()}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  auto gw = torch::autograd::grad({gx.pow(2).sum()}, {w})[0];
  auto xr = x.detach().requires_grad_();
  auto wr = w.detach().requires_grad_();
  auto yr = at::relu(at::linear(xr, wr));
  auto gxr = torch::autograd::grad({yr.sum()}, {xr}, {}, true, true)[0];
  auto gwr = torch::autograd::grad({gxr.pow(2).sum()}, {wr})[0];
  EXPECT_TRUE(at::allclose(gw, gwr, 1e-12, 1e-12));
}

TEST(Ops, ErrorsNameOperatorAndArgument) {
  try {
    torch_relu_ext::fused_linear_relu(at::randn({4, 2}), at::randn({5, 3}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("relu_ext::fused_linear_relu"), std::string::npos) << msg;
    EXPECT_NE(msg.find("in_features"), std::string::npos) << msg;
  }
  try {
    torch_relu_ext::dead_prelu(at::randn({4, 3}), at::rand({2}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("relu_ext::dead_prelu"), std::string::npos) << msg;
    EXPECT_NE(msg.find("weight"), std::string::npos) << msg;
  }
}

TEST(Ops, ConcurrentCallsFromCppThreads) {
  auto x = at::randn({256, 32});
  auto w = at::randn({48, 32});
  auto b = at::randn({48});
  const auto expected = at::relu(at::linear(x, w, b));
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      bool all = true;
      for (int i = 0; i < 50; ++i) {
        all = all && at::allclose(torch_relu_ext::fused_linear_relu(x, w, b), expected);
      }
      ok[t] = all;
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_TRUE(ok[t]) << t;
}

// Every CPU kernel path (row blocks, chunked reductions, each PReLU layout),
// so that the sanitizer build walks all of them.
TEST(Ops, KernelPathsAtSizesThatSplitWork) {
  at::manual_seed(3);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const auto opt = at::TensorOptions().dtype(dtype);
    // {40, 300, 3100}: our float32 product's deep (k > 256) and wide
    // (n > 3072) blocks where it runs (AVX-512, not Intel).
    for (auto shape : std::vector<std::vector<int64_t>>{
             {1, 3, 5}, {9000, 16, 33}, {300, 7, 257}, {40, 300, 3100}}) {
      auto x = at::randn({shape[0], shape[1]}, opt).requires_grad_();
      auto w = at::randn({shape[2], shape[1]}, opt).requires_grad_();
      auto b = at::randn({shape[2]}, opt).requires_grad_();
      auto [y, mask] = torch_relu_ext::detail::fused_linear_relu_forward(x, w, b);
      auto counts = torch_relu_ext::detail::relu_mask_count(mask, y);
      auto bits = torch_relu_ext::detail::relu_mask_unpack(mask, y.sizes());
      EXPECT_TRUE(at::equal(counts, bits.sum(0)));
      if (dtype == at::kFloat) EXPECT_TRUE(at::equal(bits, y > 0));
      auto grads = torch::autograd::grad({y.to(at::kFloat).sum()}, {x, w, b});
      EXPECT_EQ(grads.size(), 3u);
    }
    // Rows paths: 256 and 192 channels (16-bit register counters with
    // AVX-512), 400 (groups of channel vectors over row chunks).
    for (auto shape : std::vector<std::vector<int64_t>>{{7},
                                                        {40000, 13},
                                                        {8, 7, 33, 35},
                                                        {2, 1, 30, 31},
                                                        {70, 256},
                                                        {1100, 400},
                                                        {2, 192, 5, 5}}) {
      auto x = at::randn(shape, opt);
      if (shape.size() == 4) x = x.contiguous(at::MemoryFormat::ChannelsLast);
      x.requires_grad_();
      const int64_t channels = shape.size() >= 2 ? shape[1] : 1;
      auto w = at::rand({channels}, opt).requires_grad_();
      auto [out, count] = torch_relu_ext::dead_prelu(x, w);
      EXPECT_EQ(count.sum().item<int64_t>(), (x > 0).sum().item<int64_t>());
      EXPECT_TRUE(at::equal(out, at::prelu(x, w)));
      auto grads = torch::autograd::grad({out.to(at::kFloat).sum()}, {x, w});
      EXPECT_EQ(grads[0].sizes(), x.sizes());
    }
  }
}

// The malformed-call table through the C++ API: each call throws c10::Error
// whose message names the operator and the argument.
TEST(Ops, MalformedCallsThroughCppApi) {
  const auto x = at::randn({4, 3});
  const auto w = at::randn({5, 3});
  const auto b = at::randn({5});
  const auto mask = at::zeros({3}, at::kByte);
  struct Case {
    const char* name;
    std::function<void()> call;
    const char* op;
    const char* word;
  };
  const std::vector<Case> cases = {
      {"0-D input", [&] { torch_relu_ext::fused_linear_relu(at::randn({}), w, b); },
       "fused_linear_relu", "input"},
      {"1-D weight", [&] { torch_relu_ext::fused_linear_relu(x, at::randn({3}), b); },
       "fused_linear_relu", "weight"},
      {"in_features",
       [&] {
         torch_relu_ext::fused_linear_relu(at::randn({4, 2}), w, b);
       },
       "fused_linear_relu", "in_features"},
      {"bias size", [&] { torch_relu_ext::fused_linear_relu(x, w, at::randn({4})); },
       "fused_linear_relu", "bias"},
      {"int input", [&] { torch_relu_ext::fused_linear_relu(x.to(at::kLong), w, b); },
       "fused_linear_relu", "input"},
      {"dtype mix", [&] { torch_relu_ext::fused_linear_relu(x.to(at::kDouble), w, b); },
       "fused_linear_relu", "weight"},
      {"complex weight", [&] { torch_relu_ext::fused_linear_relu(x, w.to(at::kComplexFloat), b); },
       "fused_linear_relu", "weight"},
      {"sparse input", [&] { torch_relu_ext::fused_linear_relu(x.to_sparse(), w, b); },
       "fused_linear_relu", "input"},
      {"mask size",
       [&] {
         torch_relu_ext::detail::fused_linear_relu_backward(
             at::randn({4, 5}), x, w, at::zeros({2}, at::kByte), {true, true, true});
       },
       "fused_linear_relu_backward", "mask"},
      {"grad shape",
       [&] {
         torch_relu_ext::detail::fused_linear_relu_backward(at::randn({4, 4}), x, w, mask,
                                                            {true, true, true});
       },
       "fused_linear_relu_backward", "grad_output"},
      {"prelu weight size", [&] { torch_relu_ext::dead_prelu(x, at::rand({2})); }, "dead_prelu",
       "weight"},
      {"prelu 2-D weight",
       [&] {
         torch_relu_ext::dead_prelu(x, at::rand({1, 3}));
       },
       "dead_prelu", "weight"},
      {"prelu int input", [&] { torch_relu_ext::dead_prelu(x.to(at::kInt), at::rand({3})); },
       "dead_prelu", "input"},
      {"prelu bool weight", [&] { torch_relu_ext::dead_prelu(x, at::ones({3}, at::kBool)); },
       "dead_prelu", "weight"},
      {"prelu dtype mix", [&] { torch_relu_ext::dead_prelu(x, at::rand({3}, at::kDouble)); },
       "dead_prelu", "weight"},
      {"prelu backward grad",
       [&] {
         torch_relu_ext::detail::dead_prelu_backward(at::randn({3, 4}), x, at::rand({3}),
                                                     {true, true});
       },
       "dead_prelu_backward", "grad_output"},
  };
  for (const auto& c : cases) {
    try {
      c.call();
      ADD_FAILURE() << c.name << ": no error";
    } catch (const c10::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::string("relu_ext::") + c.op), std::string::npos)
          << c.name << ": " << msg;
      EXPECT_NE(msg.find(c.word), std::string::npos) << c.name << ": " << msg;
    }
  }
}
