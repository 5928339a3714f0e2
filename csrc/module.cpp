// The Python module infinidepth._C. Importing it loads the shared library, whose static
// initialisers register the ops under torch.ops.infinidepth; the module itself is empty.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "infinidepth kernels (torch.ops.infinidepth)",
                                      -1, nullptr};
  return PyModule_Create(&module);
}
}
