// Schemas of every dvfl op, declared once. Backends register implementations per dispatch key in
// their own files (TORCH_LIBRARY_IMPL); autograd and fake kernels are registered from Python
// (dvfl_kernels/ops.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(dvfl, m) {
  // Fused forward-KL + cross-entropy per row. target: int64 labels (B,) or soft targets (B, K) in the
  // accumulation dtype. Returns losses (3, B) = [total, kd, ce] and, when compute_grad, d total_b / d s
  // (B, K), both in the accumulation dtype (float32, or float64 for float64 logits).
  m.def(
      "kd_ce_loss_rows(Tensor student, Tensor teacher, Tensor target, float alpha, float temperature, "
      "float label_smoothing, bool compute_grad) -> (Tensor, Tensor)");
}

// `import dvfl_kernels._C` loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
