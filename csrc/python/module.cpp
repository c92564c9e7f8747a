// The Python extension module torch_relu_ext._C. Importing it loads this
// shared object, whose static initialisers register the relu_ext operators.
// Its functions report which build of the CPU loops and which matrix-product
// backend run, and expose the C++ mask-size formula to the tests. Kept out of
// the LibTorch library (it needs Python).
#include <Python.h>

#include <c10/util/Exception.h>

#include <string>

#include "../core/relu_mask.h"
#include "../cpu/dispatch.h"
#include "../cpu/gemm/gemm.h"

static PyObject* cpu_isa(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(torch_relu_ext::cpu::isa_name(torch_relu_ext::cpu::cpu_isa()));
}

// Errors (a bad TORCH_RELU_EXT_CPU_GEMM) become Python RuntimeErrors.
static PyObject* cpu_gemm(PyObject* /*self*/, PyObject* /*args*/) {
  try {
    return PyUnicode_FromString(torch_relu_ext::cpu::gemm::describe().c_str());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

static PyObject* cpu_gemm_backend(PyObject* /*self*/, PyObject* args) {
  using torch_relu_ext::cpu::gemm::Use;
  const char* use = nullptr;
  const char* dtype = nullptr;
  long long m = 0, n = 0, k = 0;
  if (!PyArg_ParseTuple(args, "ssLLL", &use, &dtype, &m, &n, &k)) return nullptr;
  const std::string u = use, d = dtype;
  const Use uses[] = {Use::kForward, Use::kForwardMasked, Use::kGradInput, Use::kGradWeight};
  const char* use_names[] = {"forward", "forward_masked", "grad_input", "grad_weight"};
  const c10::ScalarType dtypes[] = {c10::kFloat, c10::kDouble, c10::kBFloat16, c10::kHalf};
  const char* dtype_names[] = {"float32", "float64", "bfloat16", "float16"};
  int ui = -1, di = -1;
  for (int i = 0; i < 4; ++i) ui = u == use_names[i] ? i : ui;
  for (int i = 0; i < 4; ++i) di = d == dtype_names[i] ? i : di;
  if (ui < 0 || di < 0) {
    PyErr_Format(
        PyExc_ValueError,
        "cpu_gemm_backend: use must be forward|forward_masked|grad_input|grad_weight and dtype "
        "float32|float64|bfloat16|float16, got '%s', '%s'",
        use, dtype);
    return nullptr;
  }
  try {
    const auto b = torch_relu_ext::cpu::gemm::choose(uses[ui], dtypes[di], m, n, k);
    return PyUnicode_FromString(torch_relu_ext::cpu::gemm::name(b));
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

static PyObject* set_cpu_gemm(PyObject* /*self*/, PyObject* args) {
  const char* setting = nullptr;
  if (!PyArg_ParseTuple(args, "s", &setting)) return nullptr;
  try {
    torch_relu_ext::cpu::gemm::set_mode(setting);
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
  Py_RETURN_NONE;
}

static PyObject* mask_bytes(PyObject* /*self*/, PyObject* args) {
  long long rows = 0;
  long long out_features = 0;
  int padded = 0;
  if (!PyArg_ParseTuple(args, "LLp", &rows, &out_features, &padded)) return nullptr;
  return PyLong_FromLongLong(
      torch_relu_ext::core::relu_mask_bytes(rows, out_features, padded != 0));
}

static PyMethodDef relu_ext_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "Instruction set of the CPU loops in use: 'default', 'avx2' or 'avx512' (follows "
     "ATEN_CPU_CAPABILITY)."},
    {"cpu_gemm", cpu_gemm, METH_NOARGS,
     "Setting of the CPU matrix product (TORCH_RELU_EXT_CPU_GEMM=auto|own|onednn|dnnl|amx|aten) "
     "and "
     "the "
     "backend it chooses for a few representative products: 'auto: forward float32 ... onednn, "
     "...'."},
    {"cpu_gemm_backend", cpu_gemm_backend, METH_VARARGS,
     "cpu_gemm_backend(use, dtype, m, n, k): the backend ('own', 'onednn', 'dnnl', 'amx' or "
     "'aten') of an "
     "(m x k) @ (k x n) product; use: 'forward' (no mask), 'forward_masked', 'grad_input' or "
     "'grad_weight'; dtype: "
     "'float32', 'float64', 'bfloat16' or 'float16'."},
    {"set_cpu_gemm", set_cpu_gemm, METH_VARARGS,
     "set_cpu_gemm(setting): replaces TORCH_RELU_EXT_CPU_GEMM for this process ('auto', 'own', "
     "'onednn', 'dnnl', 'amx' or 'aten'; anything else raises ValueError). For benchmarks and "
     "tests."},
    {"mask_bytes", mask_bytes, METH_VARARGS,
     "mask_bytes(rows, out_features, padded): bytes of the packed ReLU mask, as the C++ kernels "
     "compute it (csrc/core/relu_mask.h; padded: CUDA's 128-bit rows)."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef relu_ext_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "torch-relu-ext operators; importing registers torch.ops.relu_ext.",
    -1,
    relu_ext_methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&relu_ext_module); }
