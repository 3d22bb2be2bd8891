// CPU kernel of the fused KL + CE distillation loss (dvfl::kd_ce_loss_rows).
//
// Rows run in parallel (at::parallel_for). A row is first converted to the accumulation type in a
// per-task buffer (half/bf16 -> float; a 1000-class row is 8 KB, it stays in L1), then handed to the
// row kernel (kd_loss_cpu_row.h), built for AVX2 + FMA and for baseline x86-64 and chosen at run
// time. float64 inputs are computed in float64 (for gradcheck).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "../cpu_capability.h"
#include "kd_loss.h"
#include "kd_loss_cpu_kernels.h"

namespace dvfl {
namespace {

// Rows per parallel task: enough classes per task that thread start-up is amortised.
constexpr int64_t kElementsPerTask = 4096;

template <typename acc_t>
using RowKernel = void (*)(const acc_t*, const acc_t*, const acc_t*, int64_t, int64_t, acc_t, acc_t, acc_t, acc_t*,
                           acc_t*, double[3]);

// The row kernel for this CPU: AVX2 + FMA where available, else the baseline build
// (cpu_capability.h; DVFL_CPU_CAPABILITY=base forces the baseline).
template <typename acc_t>
RowKernel<acc_t> row_kernel() {
  static const RowKernel<acc_t> kernel = cpu_has_avx2_fma() ? &avx2::kd_ce_row_entry<acc_t> : &base::kd_ce_row_entry<acc_t>;
  return kernel;
}

// The row in the accumulation type: the row itself, or converted into `buf` (half / bfloat16).
template <typename scalar_t, typename acc_t>
const acc_t* row_as_acc(const scalar_t* row, int64_t K, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return row;
  } else {
    buf.resize(K);
    for (int64_t k = 0; k < K; ++k) buf[k] = static_cast<acc_t>(row[k]);
    return buf.data();
  }
}

std::tuple<at::Tensor, at::Tensor> kd_ce_loss_rows_cpu(const at::Tensor& student_in, const at::Tensor& teacher_in,
                                                       const at::Tensor& target_in, double alpha, double temperature,
                                                       double label_smoothing, bool compute_grad) {
  check_kd_ce_args(student_in, teacher_in, target_in, temperature);
  // Rows may be strided; the class dimension must be dense (copied only when it is not).
  auto dense_rows = [](const at::Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); };
  const at::Tensor student = dense_rows(student_in), teacher = dense_rows(teacher_in), target = dense_rows(target_in);
  const int64_t B = student.size(0), K = student.size(1);
  const bool soft = target.dim() == 2;
  const auto acc_type = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor losses = at::empty({3, B}, student.options().dtype(acc_type));
  at::Tensor grad = at::empty({compute_grad ? B : 0, K}, student.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kd_ce_loss_rows_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* s_ptr = student.const_data_ptr<scalar_t>();
    const scalar_t* t_ptr = teacher.const_data_ptr<scalar_t>();
    const int64_t s_stride = student.stride(0), t_stride = teacher.stride(0), y_stride = target.stride(0);
    const acc_t* q_ptr = soft ? target.const_data_ptr<acc_t>() : nullptr;
    const int64_t* label_ptr = soft ? nullptr : target.const_data_ptr<int64_t>();
    acc_t* losses_ptr = losses.mutable_data_ptr<acc_t>();
    acc_t* grad_ptr = compute_grad ? grad.mutable_data_ptr<acc_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, kElementsPerTask / K);
    const RowKernel<acc_t> kernel = row_kernel<acc_t>();
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> s_buf, t_buf, scratch(3 * K);
      for (int64_t b = begin; b < end; ++b) {
        const acc_t* s = row_as_acc(s_ptr + b * s_stride, K, s_buf);
        const acc_t* t = row_as_acc(t_ptr + b * t_stride, K, t_buf);
        double out[3];
        kernel(s, t, soft ? q_ptr + b * y_stride : nullptr, soft ? 0 : label_ptr[b * y_stride], K, acc_t(alpha),
               acc_t(temperature), acc_t(label_smoothing), scratch.data(), grad_ptr ? grad_ptr + b * K : nullptr, out);
        losses_ptr[b] = acc_t(out[0]);
        losses_ptr[B + b] = acc_t(out[1]);
        losses_ptr[2 * B + b] = acc_t(out[2]);
      }
    });
  });
  return {losses, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(dvfl, CPU, m) { m.impl("kd_ce_loss_rows", &kd_ce_loss_rows_cpu); }

}  // namespace dvfl
