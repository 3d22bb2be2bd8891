// Host implementations of the focal-modulation ops (schemas: csrc/ops.cpp), for CPU and CUDA tensors
// alike; registered as the ops' CPU and CUDA kernels at the end of focal.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace dvfl {

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_context_kernels(const at::Tensor& z, const at::Tensor& g,
                                                                   const std::vector<at::Tensor>& weights,
                                                                   bool normalize, bool save);
std::vector<at::Tensor> spatial_context_backward_kernels(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& g,
                                                     const std::vector<at::Tensor>& weights, const at::Tensor& pre,
                                                     const at::Tensor& mean, bool normalize, bool weights_grad);
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_context_kernels(const at::Tensor& z_t, const at::Tensor& g_t,
                                                                    const std::vector<at::Tensor>& weights,
                                                                    int64_t num_frames, bool normalize, bool save);
// Inference, CPU: the temporal context with int8 tap GEMMs (schema and argument layout: csrc/ops.cpp).
at::Tensor temporal_context_int8(const at::Tensor& z_t, const at::Tensor& g_t, at::TensorList packed,
                                 at::TensorList tap_scales, at::ArrayRef<double> input_scales,
                                 at::IntArrayRef input_zero_points, int64_t num_frames, bool normalize);
std::vector<at::Tensor> temporal_context_backward_kernels(const at::Tensor& grad, const at::Tensor& z_t,
                                                      const at::Tensor& g_t, const std::vector<at::Tensor>& weights,
                                                      int64_t num_frames, const at::Tensor& pre,
                                                      const at::Tensor& mean, bool normalize, bool weights_grad);
at::Tensor modulate_kernels(const at::Tensor& q, const at::Tensor& m_s, const at::Tensor& m_t);
std::vector<at::Tensor> modulate_backward_kernels(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& m_s,
                                              const at::Tensor& m_t);
// "avx512", "avx2" or "base": the instruction set the kernels run with on this CPU.
const char* focal_cpu_capability();

}  // namespace dvfl
