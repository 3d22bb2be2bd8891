// Schemas of every dvfl op, declared once. Implementations are registered per dispatch key: the
// loss's C++ kernels in their own files (TORCH_LIBRARY_IMPL); the focal ops' CPU and CUDA kernels,
// fake kernels and autograd from dvfl_kernels/focal.py, which calls the C++ CPU kernels through the
// functions this module exports (and Triton's for CUDA tensors, or for CPU tensors interpreted).
#include <torch/extension.h>
#include <torch/library.h>

#include "focal/focal.h"

TORCH_LIBRARY(dvfl, m) {
  // Fused forward-KL + cross-entropy per row. target: int64 labels (B,) or soft targets (B, K) in the
  // accumulation dtype. Returns losses (3, B) = [total, kd, ce] and, when compute_grad, d total_b / d s
  // (B, K), both in the accumulation dtype (float32, or float64 for float64 logits).
  m.def(
      "kd_ce_loss_rows(Tensor student, Tensor teacher, Tensor target, float alpha, float temperature, "
      "float label_smoothing, bool compute_grad) -> (Tensor, Tensor)");

  // Focal modulation (maths: dvfl_kernels/reference.py). Activations are channels-last (N, H, W, C),
  // channel stride 1, any other strides. `backend` names the kernel family that runs the call on
  // the tensors' device ("cpu", "triton", "cuda"). Forward ops return (context, pre, mean): `pre`
  // is (L, N, H, W, C) pre-activations when `save` (else (0, N, H, W, C)) and `mean` the global
  // term's mean, (N, C) spatially and (N / num_frames, H, W, C) temporally, both in the
  // accumulation dtype (float32, or float64 for float64 inputs). Backward ops return
  // [d z, d g, d weights[0], ...].
  m.def(
      "spatial_context(Tensor z, Tensor g, Tensor[] weights, bool normalize, bool save, str backend) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "spatial_context_backward(Tensor grad, Tensor z, Tensor g, Tensor[] weights, Tensor pre, Tensor mean, "
      "bool normalize, str backend) -> Tensor[]");
  m.def(
      "temporal_context(Tensor z_t, Tensor g_t, Tensor[] weights, int num_frames, bool normalize, bool save, "
      "str backend) -> (Tensor, Tensor, Tensor)");
  m.def(
      "temporal_context_backward(Tensor grad, Tensor z_t, Tensor g_t, Tensor[] weights, int num_frames, "
      "Tensor pre, Tensor mean, bool normalize, str backend) -> Tensor[]");
  m.def("modulate(Tensor q, Tensor m_s, Tensor m_t, str backend) -> Tensor");
  m.def("modulate_backward(Tensor grad, Tensor q, Tensor m_s, Tensor m_t, str backend) -> Tensor[]");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dvfl C++ kernels; importing this module registers torch.ops.dvfl.*";
  m.def("spatial_context_kernels", &dvfl::spatial_context_kernels);
  m.def("spatial_context_backward_kernels", &dvfl::spatial_context_backward_kernels);
  m.def("temporal_context_kernels", &dvfl::temporal_context_kernels);
  m.def("temporal_context_backward_kernels", &dvfl::temporal_context_backward_kernels);
  m.def("modulate_kernels", &dvfl::modulate_kernels);
  m.def("modulate_backward_kernels", &dvfl::modulate_backward_kernels);
  m.def("focal_cpu_capability", &dvfl::focal_cpu_capability,
        "The instruction set the CPU focal kernels run with here (avx512 or base).");
}
