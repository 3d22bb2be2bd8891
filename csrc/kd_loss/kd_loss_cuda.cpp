// CUDA dispatch-key registration of dvfl::kd_ce_loss_rows: allocates outputs and calls the launcher
// in kd_loss_cuda.cu on the current stream. No host synchronisation.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "kd_loss.h"
#include "kd_loss_cuda.h"

namespace dvfl {
namespace {

LogitType logit_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return LogitType::kFloat32;
    case at::kDouble: return LogitType::kFloat64;
    case at::kHalf: return LogitType::kFloat16;
    case at::kBFloat16: return LogitType::kBFloat16;
    default: TORCH_CHECK(false, "student: expected float16/bfloat16/float32/float64 logits, got ", t);
  }
}

std::tuple<at::Tensor, at::Tensor> kd_ce_loss_rows_cuda(const at::Tensor& student_in, const at::Tensor& teacher_in,
                                                        const at::Tensor& target_in, double alpha, double temperature,
                                                        double label_smoothing, bool compute_grad) {
  check_kd_ce_args(student_in, teacher_in, target_in, temperature);
  const c10::cuda::CUDAGuard guard(student_in.device());
  auto dense_rows = [](const at::Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); };
  const at::Tensor student = dense_rows(student_in), teacher = dense_rows(teacher_in), target = dense_rows(target_in);
  const int64_t B = student.size(0), K = student.size(1);
  const auto acc_type = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor losses = at::empty({3, B}, student.options().dtype(acc_type));
  at::Tensor grad = at::empty({compute_grad ? B : 0, K}, student.options().dtype(acc_type));
  KdCeLaunch args{student.const_data_ptr(), teacher.const_data_ptr(), target.const_data_ptr(),
                  losses.mutable_data_ptr(), compute_grad ? grad.mutable_data_ptr() : nullptr,
                  B, K, student.stride(0), teacher.stride(0), target.stride(0),
                  target.dim() == 2, compute_grad, alpha, temperature, label_smoothing,
                  logit_type(student.scalar_type())};
  const cudaError_t err = launch_kd_ce_loss_rows(args, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "dvfl::kd_ce_loss_rows: kernel launch failed: ", cudaGetErrorString(err));
  return {losses, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(dvfl, CUDA, m) { m.impl("kd_ce_loss_rows", &kd_ce_loss_rows_cuda); }

}  // namespace dvfl
