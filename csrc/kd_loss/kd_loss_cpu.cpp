// CPU kernel of the fused KL + CE distillation loss (dvfl::kd_ce_loss_rows).
//
// Rows run in parallel (at::parallel_for). A row is first converted to the accumulation type in a
// thread-local buffer (half/bf16 -> float; a 1000-class row is 8 KB, it stays in L1), then three
// passes over it: the maxima, the softmax sums, and the gradient. The inner loops are `omp simd`
// reductions with a branch-free exp, compiled for AVX2 and a baseline target (chosen at load time),
// so they vectorise without -ffast-math. float64 inputs are computed in float64 with std::exp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "kd_loss.h"

namespace dvfl {
namespace {

// Rows per parallel task: enough classes per task that thread start-up is amortised.
constexpr int64_t kElementsPerTask = 4096;
// Classes per block of the vectorised sums (see kd_ce_row).
constexpr int64_t kSumBlock = 256;
constexpr double kSoftTargetTol = 1e-4;  // as dvfl_kernels._checks.SOFT_TARGET_TOL

// exp(x) for x <= ~88 as 2^n * p(r) with r = x - n ln2 in [-ln2/2, ln2/2] (Cephes expf polynomial,
// ~1 ulp); exactly 0 below -87.3 (so teacher logits of -inf give probability 0). No branches, no
// libm call: vectorises under `omp simd`.
inline float exp_branchless(float x) {
  const float clamped = std::min(std::max(x, -87.3f), 88.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float rounded = clamped * 1.44269504088896341f + shifter;
  const float n = rounded - shifter;
  const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? 0.0f : p * scale;
}
inline double exp_branchless(double x) { return std::exp(x); }

// |d| up to which e^d - 1 - d comes from its series (exact for close distributions).
constexpr double kSeriesRange = 0.5;

// e^d - 1 - d for |d| <= kSeriesRange: d^2/2 (1 + d/3 (1 + d/4 (...))) to degree 10, accurate to a
// few ulps however small d is. Multiplies by reciprocals (divisions would not vectorise well).
template <typename T>
inline T exp_minus_1_minus_x(T d) {
  T p = T(1) + d * T(1.0 / 10);
  p = T(1) + d * T(1.0 / 9) * p;
  p = T(1) + d * T(1.0 / 8) * p;
  p = T(1) + d * T(1.0 / 7) * p;
  p = T(1) + d * T(1.0 / 6) * p;
  p = T(1) + d * T(1.0 / 5) * p;
  p = T(1) + d * T(1.0 / 4) * p;
  p = T(1) + d * T(1.0 / 3) * p;
  return T(0.5) * d * d * p;
}

template <typename T>
inline bool in_series_range(T x) {
  return (x <= T(kSeriesRange)) & (x >= -T(kSeriesRange));  // & not &&: no branch, vectorises
}

// expm1(x) given exp_x = e^x: the series near 0 (where exp_x - 1 would lose the low bits).
template <typename T>
inline T expm1_from(T x, T exp_x) {
  return in_series_range(x) ? x + exp_minus_1_minus_x(x) : exp_x - T(1);
}

// Pass 3 over classes [k0, k1): returns the block's KL sum and, if kWriteGrad, writes d total / d s.
// KL = sum_k (q_T - p_t - p_t d) with d = log q_T - log p_t, summed as p_t (e^d - 1 - d) >= 0 where
// p_t > 0 (exact for close distributions) and q_T where the teacher rules the class out. The
// gradient's q_T - p_t is p_t expm1(d) there, and the difference of the small complements
// expm1(log q_T) - expm1(log p_t) for probabilities near 1 (few classes). Branch-free: vectorises.
template <bool kWriteGrad, bool kSoft, typename acc_t>
struct KlPass {
  const acc_t *s, *t, *q;
  int64_t label;
  acc_t m_s, m_t, inv_t, log_z_s, log_z_st, log_z_tt, gap;
  acc_t kd_scale, ce_scale, eps, smooth, q_mass, p_label_m1, poison;

  acc_t run(int64_t k0, int64_t k1, acc_t* __restrict__ grad) const {
    // Locals, not members: stores to grad could otherwise alias them and stop vectorisation.
    const acc_t* __restrict__ s = this->s;
    const acc_t* __restrict__ t = this->t;
    const acc_t* __restrict__ q = this->q;
    const int64_t label = this->label;
    const acc_t m_s = this->m_s, m_t = this->m_t, inv_t = this->inv_t, log_z_s = this->log_z_s;
    const acc_t log_z_st = this->log_z_st, log_z_tt = this->log_z_tt, gap = this->gap, kd_scale = this->kd_scale;
    const acc_t ce_scale = this->ce_scale, eps = this->eps, smooth = this->smooth, q_mass = this->q_mass;
    const acc_t p_label_m1 = this->p_label_m1, poison = this->poison;
    acc_t kl = 0;
#pragma omp simd reduction(+ : kl)
    for (int64_t k = k0; k < k1; ++k) {
      const acc_t log_q = (s[k] - m_s) * inv_t - log_z_st, log_p = (t[k] - m_t) * inv_t - log_z_tt;
      const acc_t q_student_t = exp_branchless(log_q), p_teacher = exp_branchless(log_p);
      const acc_t d = (s[k] - t[k]) * inv_t - gap;
      const bool near = (p_teacher > 0) & in_series_range(d);
      const acc_t phi = exp_minus_1_minus_x(near ? d : acc_t(0));
      const bool likely = (q_student_t > acc_t(0.5)) | (p_teacher > acc_t(0.5));
      const acc_t complement_diff = expm1_from(log_q, q_student_t) - expm1_from(log_p, p_teacher);
      const acc_t far_diff = likely ? complement_diff : q_student_t - p_teacher;
      const acc_t far_kl = p_teacher > 0 ? far_diff - p_teacher * d : q_student_t;
      kl += near ? p_teacher * phi : far_kl;
      if constexpr (kWriteGrad) {
        const acc_t kd_diff = near ? p_teacher * (d + phi) : far_diff;
        const acc_t p = exp_branchless(s[k] - m_s - log_z_s);
        acc_t ce_grad;
        if constexpr (kSoft) {
          ce_grad = q_mass * p - ((1 - eps) * q[k] + smooth);
        } else {
          ce_grad = (k == label ? p_label_m1 + eps : p) - smooth;
        }
        grad[k] = kd_scale * kd_diff + ce_scale * ce_grad + poison;
      }
    }
    return kl;
  }
};

struct RowStats {
  double total, kd, ce;
};

// One row: s, t (K values, accumulation type), soft target q (or nullptr) / label; writes grad if
// given. Pass 1: maxima; pass 2: softmax sums (double); pass 3: the KL and the gradient. Every loss
// is a sum of non-negative terms, so confident predictions and near-identical distributions keep
// float32 accuracy (see dvfl_kernels/triton/kd_loss.py, which uses the same formulas).
template <typename acc_t>
RowStats kd_ce_row(const acc_t* s, const acc_t* t, const acc_t* q, int64_t label, int64_t K, acc_t alpha,
                   acc_t temperature, acc_t eps, acc_t* grad) {
  const acc_t inv_t = acc_t(1) / temperature;
  acc_t m_s = -std::numeric_limits<acc_t>::infinity(), m_t = m_s;
#pragma omp simd reduction(max : m_s, m_t)
  for (int64_t k = 0; k < K; ++k) {
    m_s = std::max(m_s, s[k]);
    m_t = std::max(m_t, t[k]);
  }
  // Softmax sums in double over blocks of kSumBlock (exps in acc_t): at high temperature the KL
  // depends on log-sums whose relative errors must stay far below float32 rounding.
  double z_s = 0, z_st = 0, z_tt = 0, sum_s = 0, sum_q = 0, sum_qs = 0, neg_q = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kSumBlock) {
    const int64_t k1 = std::min(K, k0 + kSumBlock);
    double b_z_s = 0, b_z_st = 0, b_z_tt = 0, b_sum_s = 0;
#pragma omp simd reduction(+ : b_z_s, b_z_st, b_z_tt, b_sum_s)
    for (int64_t k = k0; k < k1; ++k) {
      b_z_s += exp_branchless(s[k] - m_s);
      b_z_st += exp_branchless((s[k] - m_s) * inv_t);
      b_z_tt += exp_branchless((t[k] - m_t) * inv_t);
      b_sum_s += s[k];
    }
    z_s += b_z_s, z_st += b_z_st, z_tt += b_z_tt, sum_s += b_sum_s;
    if (q != nullptr) {
      double b_sum_q = 0, b_sum_qs = 0, b_neg_q = 0;
#pragma omp simd reduction(+ : b_sum_q, b_sum_qs, b_neg_q)
      for (int64_t k = k0; k < k1; ++k) {
        b_sum_q += q[k];
        b_sum_qs += q[k] > 0 ? double(q[k]) * double(s[k]) : 0.0;  // exact products
        b_neg_q += q[k] < 0 ? 1.0 : 0.0;
      }
      sum_q += b_sum_q, sum_qs += b_sum_qs, neg_q += b_neg_q;
    }
  }
  const double log_z_s = std::log(z_s);
  const acc_t log_z_st = acc_t(std::log(z_st)), log_z_tt = acc_t(std::log(z_tt));
  const acc_t gap = acc_t(double(m_s - m_t) * inv_t + std::log(z_st / z_tt));  // lse(s/T) - lse(t/T)
  // CE: lse - s = log z_s + (m_s - s) >= 0, smoothing eps (m_s - mean(s)) >= 0
  const double smooth_term = eps > 0 ? eps * (double(m_s) - sum_s / double(K)) : 0.0;  // avoids 0 * -inf
  bool valid;
  double ce;
  acc_t q_mass = 1, p_label_m1 = 0;
  if (q != nullptr) {
    valid = std::abs(sum_q - 1.0) <= kSoftTargetTol && neg_q == 0;
    q_mass = acc_t((1 - eps) * sum_q + eps);
    ce = double(q_mass) * log_z_s + (1 - eps) * (double(m_s) * sum_q - sum_qs) + smooth_term;
  } else {
    valid = label >= 0 && label < K;
    const double margin = valid ? double(m_s - s[label]) : 0.0;  // m_s - s_label >= 0
    ce = log_z_s + (1 - eps) * margin + smooth_term;
    const acc_t log_p_label = acc_t(-(log_z_s + margin));  // accurate log-probability of the label
    p_label_m1 = expm1_from(log_p_label, exp_branchless(log_p_label));
  }
  if (!valid) ce = std::numeric_limits<double>::quiet_NaN();

  const acc_t lz_s = acc_t(log_z_s), kd_scale = alpha * temperature, ce_scale = 1 - alpha, smooth = eps / acc_t(K);
  const acc_t poison = valid ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN();
  // Per class: KL = sum_k (q_T - p_t - p_t d) with d = log q_T - log p_t, summed as p_t (e^d - 1 - d)
  // >= 0 where p_t > 0 (exact for close distributions) and q_T where the teacher rules the class out.
  // The gradient's q_T - p_t is p_t expm1(d) there, and the difference of the small complements
  // expm1(log q_T) - expm1(log p_t) for probabilities near 1 (few classes).
  // Non-negative terms: float sums within blocks lose nothing that matters; blocks add in double.
  double kl = 0;
  auto kl_sum = [&](auto pass) {
    for (int64_t k0 = 0; k0 < K; k0 += kSumBlock) kl += pass.run(k0, std::min(K, k0 + kSumBlock), grad);
  };
#define DVFL_KL_PASS(GRAD, SOFT)                                                                          \
  kl_sum(KlPass<GRAD, SOFT, acc_t>{s, t, q, label, m_s, m_t, inv_t, lz_s, log_z_st, log_z_tt, gap, kd_scale, \
                                   ce_scale, eps, smooth, q_mass, p_label_m1, poison})
  if (grad != nullptr) {
    if (q != nullptr) DVFL_KL_PASS(true, true); else DVFL_KL_PASS(true, false);
  } else {
    DVFL_KL_PASS(false, false);
  }
#undef DVFL_KL_PASS
  const double kd = double(temperature) * double(temperature) * kl;
  return {double(alpha) * kd + (1 - double(alpha)) * ce, kd, ce};
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
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> s_buf, t_buf;
      for (int64_t b = begin; b < end; ++b) {
        const acc_t* s = row_as_acc(s_ptr + b * s_stride, K, s_buf);
        const acc_t* t = row_as_acc(t_ptr + b * t_stride, K, t_buf);
        const RowStats r = kd_ce_row<acc_t>(s, t, soft ? q_ptr + b * y_stride : nullptr,
                                            soft ? 0 : label_ptr[b * y_stride], K, acc_t(alpha), acc_t(temperature),
                                            acc_t(label_smoothing), grad_ptr ? grad_ptr + b * K : nullptr);
        losses_ptr[b] = acc_t(r.total);
        losses_ptr[B + b] = acc_t(r.kd);
        losses_ptr[2 * B + b] = acc_t(r.ce);
      }
    });
  });
  return {losses, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(dvfl, CPU, m) { m.impl("kd_ce_loss_rows", &kd_ce_loss_rows_cpu); }

}  // namespace dvfl
