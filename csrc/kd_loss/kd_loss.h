// Shared by the CPU and CUDA kd_ce_loss_rows implementations: argument checks on the C++ side
// (the Python wrapper validates first; these guard direct torch.ops.dvfl calls).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace dvfl {

inline void check_kd_ce_args(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& target,
                             double temperature) {
  TORCH_CHECK(student.dim() == 2 && student.size(0) > 0 && student.size(1) > 0,
              "student: expected shape (B, K) with B, K >= 1, got ", student.sizes());
  TORCH_CHECK(teacher.sizes() == student.sizes(), "teacher: expected shape ", student.sizes(), ", got ",
              teacher.sizes());
  TORCH_CHECK(teacher.scalar_type() == student.scalar_type(), "teacher: expected dtype ",
              student.scalar_type(), ", got ", teacher.scalar_type());
  TORCH_CHECK(teacher.device() == student.device() && target.device() == student.device(),
              "student, teacher, target: expected one device");
  const bool soft = target.dim() == 2;
  if (soft) {
    TORCH_CHECK(target.sizes() == student.sizes(), "target: soft targets must have shape ", student.sizes());
    const auto acc = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(target.scalar_type() == acc, "target: soft targets must be ", acc, ", got ", target.scalar_type());
  } else {
    TORCH_CHECK(target.dim() == 1 && target.size(0) == student.size(0) && target.scalar_type() == at::kLong,
                "target: expected int64 labels of shape (", student.size(0), ",), got ", target.scalar_type(), " ",
                target.sizes());
  }
  TORCH_CHECK(temperature > 0, "temperature: expected > 0, got ", temperature);
}

}  // namespace dvfl
