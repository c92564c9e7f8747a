// Loads a TorchScript model saved from Python (which uses torch_relu_ext's
// modules), runs forward and backward in C++, and prints the results as one
// JSON line. Nothing here mentions torch_relu_ext: linking the library is
// what registers the relu_ext operators and their C++ autograd.
//
//   run_model model.pt ROWS FEATURES
// The input is the deterministic ramp linspace(-2, 2, ROWS * FEATURES).
#include <torch/script.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: run_model model.pt ROWS FEATURES\n";
    return 2;
  }
  const int64_t rows = std::atoll(argv[2]);
  const int64_t features = std::atoll(argv[3]);
  torch::jit::Module model = torch::jit::load(argv[1]);
  torch::Tensor x =
      torch::linspace(-2.0, 2.0, rows * features).reshape({rows, features}).requires_grad_();
  torch::Tensor y = model.forward({x}).toTensor();
  y.pow(2).sum().backward();
  double grad_params = 0;
  for (const auto& p : model.parameters()) grad_params += p.grad().abs().sum().item<double>();
  std::printf(
      "{\"out_sum\": %.10g, \"out_abs_sum\": %.10g, \"out_00\": %.10g, \"grad_input_abs_sum\": "
      "%.10g, "
      "\"grad_params_abs_sum\": %.10g}\n",
      y.sum().item<double>(), y.abs().sum().item<double>(), y.flatten()[0].item<double>(),
      x.grad().abs().sum().item<double>(), grad_params);
  return 0;
}
