// The Python extension module torch_relu_ext._C. It holds no code of its own:
// importing it loads this shared object, whose static initialisers register
// the relu_ext operators. Kept out of the LibTorch library.
#include <Python.h>

static struct PyModuleDef relu_ext_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "torch-relu-ext operators; importing registers torch.ops.relu_ext.",
    -1,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&relu_ext_module); }
