// Schemas of the dvfl C++ ops, declared once. Their CPU and CUDA kernels are registered per dispatch
// key next to the kernels (TORCH_LIBRARY_IMPL in csrc/focal/focal.cpp, csrc/kd_loss/); fake kernels
// and autograd per op family in dvfl_kernels/focal.py and kd_loss.py. The Triton ops are declared in
// Python (dvfl::*_triton), so they load without this extension.
#include <torch/extension.h>
#include <torch/library.h>

#include "focal/focal.h"
#include "weights/content_digest.h"

TORCH_LIBRARY(dvfl, m) {
  // Fused forward-KL + cross-entropy per row. target: int64 labels (B,) or soft targets (B, K) in the
  // accumulation dtype. Returns losses (3, B) = [total, kd, ce] and, when compute_grad, d total_b / d s
  // (B, K), both in the accumulation dtype (float32, or float64 for float64 logits).
  m.def(
      "kd_ce_loss_rows(Tensor student, Tensor teacher, Tensor target, float alpha, float temperature, "
      "float label_smoothing, bool compute_grad) -> (Tensor, Tensor)");

  // Focal modulation (maths: dvfl_kernels/reference.py). Activations are channels-last (N, H, W, C),
  // channel stride 1, any other strides. Forward ops return (context, pre, mean): `pre`
  // is (L, N, H, W, C) pre-activations when `save` (else (0, N, H, W, C)) and `mean` the global
  // term's mean, (N, C) spatially and (N / num_frames, H, W, C) temporally, both in the
  // accumulation dtype (float32, or float64 for float64 inputs). Backward ops return
  // [d z, d g, d weights[0], ...].
  m.def(
      "spatial_context(Tensor z, Tensor g, Tensor[] weights, bool normalize, bool save) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "spatial_context_backward(Tensor grad, Tensor z, Tensor g, Tensor[] weights, Tensor pre, Tensor mean, "
      "bool normalize, bool weights_grad) -> Tensor[]");
  m.def(
      "temporal_context(Tensor z_t, Tensor g_t, Tensor[] weights, int num_frames, bool normalize, bool save) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "temporal_context_backward(Tensor grad, Tensor z_t, Tensor g_t, Tensor[] weights, int num_frames, "
      "Tensor pre, Tensor mean, bool normalize, bool weights_grad) -> Tensor[]");
  // Inference only, CPU: the temporal context with each level's tap GEMM in int8
  // (dvfl_kernels/cpu_int8.py): packed[l] is onednn::qlinear_prepack of the int8 taps stacked
  // tap-major, (k * C_out, C_in) (row j * C + o = W[o, :, j]); tap_scales[l] their float32 per-row
  // scales (k * C,); input_scales / input_zero_points quantize level l's input per tensor. Returns
  // the context (N, H, W, C) in z_t's dtype.
  m.def(
      "temporal_context_int8(Tensor z_t, Tensor g_t, Tensor[] packed, Tensor[] tap_scales, float[] input_scales, "
      "int[] input_zero_points, int num_frames, bool normalize) -> Tensor");
  m.def("modulate(Tensor q, Tensor m_s, Tensor m_t) -> Tensor");
  m.def("modulate_backward(Tensor grad, Tensor q, Tensor m_s, Tensor m_t) -> Tensor[]");

  // The activation side of the int8 GEMMs (dvfl_kernels/cpu_int8.py): x (float32 / bfloat16) ->
  // uint8 clamp(round_half_even(x * (1 / scale)) + zero_point, 0, 255), NaN -> 0, x's shape, contiguous.
  m.def("quantize_u8(Tensor x, float scale, int zero_point) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dvfl C++ kernels; importing this module registers torch.ops.dvfl.* and their CPU / CUDA kernels";
  m.def("focal_cpu_capability", &dvfl::focal_cpu_capability,
        "The instruction set the CPU focal kernels run with here (avx512 or base).");
  m.def("content_digest", &dvfl::content_digest, py::arg("tensor"),
        "A 64-bit digest of every byte of a CPU tensor's data (prepared weights see any write with it).");
}
