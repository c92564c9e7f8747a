// The Python extension module torch_relu_ext._C. Importing it loads this
// shared object, whose static initialisers register the relu_ext operators;
// its functions report which CPU loops and float32 product run, and expose
// the C++ mask-size formula to the tests. Not part of the LibTorch library
// (it needs Python).
#include <Python.h>

#include "../core/relu_mask.h"
#include "../cpu/loops.h"

static PyObject* cpu_isa(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(torch_relu_ext::cpu::loops().isa);
}

static PyObject* cpu_gemm(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(torch_relu_ext::cpu::own_sgemm() != nullptr ? "own-avx512" : "aten");
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
     "Matrix product of float32 fused_linear_relu on CPU: 'own-avx512' or 'aten' (follows "
     "TORCH_RELU_EXT_CPU_GEMM=auto|own|aten)."},
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
