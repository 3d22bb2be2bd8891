// The per-row CPU kernel of the fused KL + CE loss, compiled once per CPU capability: included by
// kd_loss_cpu_base.cpp (baseline x86-64) and kd_loss_cpu_avx2.cpp (AVX2 + FMA), each defining
// DVFL_CPU_CAPABILITY as its namespace, and chosen at run time by kd_loss_cpu.cpp. Only plain C++
// here (no std:: inline helpers), so nothing compiled for AVX2 can leak into the baseline build.
//
// Per row, three passes over the K classes:
//   1. the maxima of s and t;
//   2. the exps e_s = exp(s - m_s), e_st = exp((s - m_s)/T), e_tt = exp((t - m_t)/T), kept in a
//      scratch buffer, and their sums without the argmax (whose exp is 1): log z = log1p(rest)
//      stays accurate for confident predictions; float blocks of kSumBlock, added in double;
//   3. from the stored exps: KL = sum_k (q_T - p_t - p_t d), d = log q_T - log p_t, summed as
//      p_t (e^d - 1 - d) >= 0 where p_t > 0 and |d| is small (series: exact for close
//      distributions), and the gradient d total / d s.
// CE is a sum of non-negative terms: log z_s + (1 - eps)(m_s - s_y) + eps (m_s - mean s). The two
// classes whose probability can exceed 1/2 (the argmax of s and of t) are done in scalar code with
// the complements expm1(log q_T) - expm1(log p_t), which keeps q_T - p_t accurate when both are
// near 1 (few classes). Every loop is branch-free and vectorises under `omp simd`.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kd_loss_cpu_kernels.h"

namespace dvfl {
namespace DVFL_CPU_CAPABILITY {

constexpr int64_t kSumBlock = 256;      // classes per float block of the vectorised sums
constexpr double kSeriesRange = 0.5;    // |d| up to which e^d - 1 - d comes from its series
constexpr double kSoftTargetTol = 1e-4;  // as dvfl_kernels._checks.SOFT_TARGET_TOL

struct RowResult {
  double total, kd, ce;
};

template <typename T>
inline T min_of(T a, T b) { return a < b ? a : b; }
template <typename T>
inline T max_of(T a, T b) { return a > b ? a : b; }

// exp(x) as 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2] (Cephes expf polynomial, ~1 ulp); exactly 0
// below -87.3 (teacher logits of -inf give probability 0). Branch-free, no libm call.
inline float exp_fast(float x) {
  const float clamped = min_of(max_of(x, -87.3f), 88.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (clamped * 1.44269504088896341f + shifter) - shifter;
  const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? 0.0f : p * scale;
}
inline double exp_fast(double x) { return std::exp(x); }

// e^d - 1 - d for |d| <= kSeriesRange: d^2/2 (1 + d/3 (1 + d/4 (...))) to degree 10, accurate to a
// few ulps however small d is (multiplications by reciprocals: divisions vectorise poorly).
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
  return (x <= T(kSeriesRange)) & (x >= -T(kSeriesRange));  // & not &&: no branch
}

// expm1(x) (scalar use): the series near 0, where exp(x) - 1 would lose the low bits.
template <typename T>
inline T expm1_accurate(T x) {
  return in_series_range(x) ? x + exp_minus_1_minus_x(x) : exp_fast(x) - T(1);
}

// Everything pass 3 needs, copied into locals before its loop (member loads could alias the
// stores to grad and stop vectorisation).
template <typename acc_t>
struct RowConstants {
  acc_t m_s, m_t, inv_t, log_z_s, log_z_st, log_z_tt, inv_z_s, inv_z_st, inv_z_tt;
  acc_t kd_scale, ce_scale, eps, smooth, q_mass, p_label_m1, poison;
  int64_t label, skip_a, skip_b;  // the argmax classes, done in scalar code after the loop
};

template <bool kWriteGrad, bool kSoft, typename acc_t>
acc_t kl_and_grad_block(const acc_t* __restrict__ s, const acc_t* __restrict__ t, const acc_t* __restrict__ q,
                        const acc_t* __restrict__ e_s, const acc_t* __restrict__ e_st,
                        const acc_t* __restrict__ e_tt, const RowConstants<acc_t>& c, int64_t k0, int64_t k1,
                        acc_t* __restrict__ grad) {
  const acc_t inv_t = c.inv_t, inv_z_s = c.inv_z_s, inv_z_st = c.inv_z_st, inv_z_tt = c.inv_z_tt;
  const acc_t m_s = c.m_s, m_t = c.m_t, log_z_st = c.log_z_st, log_z_tt = c.log_z_tt;
  const acc_t kd_scale = c.kd_scale, ce_scale = c.ce_scale, eps = c.eps, smooth = c.smooth;
  const acc_t q_mass = c.q_mass, p_label_m1 = c.p_label_m1, poison = c.poison;
  const int64_t label = c.label, skip_a = c.skip_a, skip_b = c.skip_b;
  acc_t kl = 0;
#pragma omp simd reduction(+ : kl)
  for (int64_t k = k0; k < k1; ++k) {
    const acc_t q_student_t = e_st[k] * inv_z_st, p_teacher = e_tt[k] * inv_z_tt;
    // d from the two log-probabilities (each subtracts its own max): accurate for small d even when
    // the logits are large or offset from each other
    const acc_t d = ((s[k] - m_s) * inv_t - log_z_st) - ((t[k] - m_t) * inv_t - log_z_tt);
    // 0/1 floats rather than bool locals, which have no vector type in GCC's `omp simd` loops
    const acc_t near = (p_teacher > 0) & in_series_range(d) ? acc_t(1) : acc_t(0);
    const acc_t phi = exp_minus_1_minus_x(near != 0 ? d : acc_t(0));
    const acc_t far_kl = p_teacher > 0 ? (q_student_t - p_teacher) - p_teacher * d : q_student_t;
    const acc_t term = near != 0 ? p_teacher * phi : far_kl;
    kl += (k == skip_a) | (k == skip_b) ? acc_t(0) : term;
    if constexpr (kWriteGrad) {
      const acc_t kd_diff = near != 0 ? p_teacher * (d + phi) : q_student_t - p_teacher;
      const acc_t p = e_s[k] * inv_z_s;
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

// The KL term and d total / d s of one class in scalar code, with the complement form for
// probabilities near 1. Used for the argmax classes skipped by the vector loop.
template <typename acc_t>
void kl_and_grad_scalar(const acc_t* s, const acc_t* t, const acc_t* q, const RowConstants<acc_t>& c, int64_t k,
                        double& kl, acc_t* grad) {
  const acc_t log_q = (s[k] - c.m_s) * c.inv_t - c.log_z_st, log_p = (t[k] - c.m_t) * c.inv_t - c.log_z_tt;
  const acc_t q_student_t = exp_fast(log_q), p_teacher = exp_fast(log_p);
  const acc_t d = log_q - log_p;
  const bool near = p_teacher > 0 && in_series_range(d);
  const acc_t phi = near ? exp_minus_1_minus_x(d) : acc_t(0);
  const bool likely = q_student_t > acc_t(0.5) || p_teacher > acc_t(0.5);
  const acc_t far_diff = likely ? expm1_accurate(log_q) - expm1_accurate(log_p) : q_student_t - p_teacher;
  kl += near ? double(p_teacher * phi) : (p_teacher > 0 ? double(far_diff - p_teacher * d) : double(q_student_t));
  if (grad != nullptr) {
    const acc_t kd_diff = near ? p_teacher * (d + phi) : far_diff;
    const acc_t p = exp_fast(s[k] - c.m_s - c.log_z_s);
    const acc_t ce_grad = q != nullptr ? c.q_mass * p - ((1 - c.eps) * q[k] + c.smooth)
                                       : (k == c.label ? c.p_label_m1 + c.eps : p) - c.smooth;
    grad[k] = c.kd_scale * kd_diff + c.ce_scale * ce_grad + c.poison;
  }
}

// One row. s, t: K logits in the accumulation type; q: soft target or nullptr (then `label`);
// scratch: 3K values; grad: K outputs or nullptr.
template <typename acc_t>
RowResult kd_ce_row(const acc_t* s, const acc_t* t, const acc_t* q, int64_t label, int64_t K, acc_t alpha,
                    acc_t temperature, acc_t eps, acc_t* scratch, acc_t* grad) {
  const acc_t inv_t = acc_t(1) / temperature;
  acc_t m_s = -std::numeric_limits<acc_t>::infinity(), m_t = m_s;
  acc_t bad_t = 0;  // teacher logits that are NaN or +inf
#pragma omp simd reduction(max : m_s, m_t) reduction(+ : bad_t)
  for (int64_t k = 0; k < K; ++k) {
    m_s = max_of(m_s, s[k]);
    m_t = max_of(m_t, t[k]);
    bad_t += (t[k] != t[k]) | (t[k] == std::numeric_limits<acc_t>::infinity()) ? acc_t(1) : acc_t(0);
  }
  // A teacher row with a NaN or +inf logit is no distribution: NaN KD, total and gradient
  // (reference.kd_ce_loss); its arithmetic runs as for an all -inf row, then is marked.
  const bool bad_teacher = bad_t > 0;
  int64_t argmax_s = 0, argmax_t = 0;  // first index of each maximum
  while (argmax_s < K - 1 && s[argmax_s] != m_s) ++argmax_s;
  while (argmax_t < K - 1 && t[argmax_t] != m_t) ++argmax_t;
  // A teacher row with no finite logit (all -inf) is no distribution: its KD term is defined as 0
  // (reference.kd_ce_loss). A max of 0 keeps its probabilities 0 instead of NaN.
  const bool no_teacher = bad_teacher || m_t == -std::numeric_limits<acc_t>::infinity();
  if (no_teacher) m_t = 0;

  acc_t* e_s = scratch;
  acc_t* e_st = scratch + K;
  acc_t* e_tt = scratch + 2 * K;
  // z = 1 + rest: the argmax's exp is exactly 1, so sums of the others give log z = log1p(rest)
  // with the relative accuracy of `rest` (a confident prediction's CE can be 1e-12).
  double rest_s = 0, rest_st = 0, rest_tt = 0, sum_s = 0, sum_q = 0, sum_qs = 0, neg_q = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kSumBlock) {
    const int64_t k1 = min_of(K, k0 + kSumBlock);
    acc_t b_rest_s = 0, b_rest_st = 0, b_rest_tt = 0, b_sum_s = 0;
#pragma omp simd reduction(+ : b_rest_s, b_rest_st, b_rest_tt, b_sum_s)
    for (int64_t k = k0; k < k1; ++k) {
      e_s[k] = exp_fast(s[k] - m_s);
      e_st[k] = exp_fast((s[k] - m_s) * inv_t);
      e_tt[k] = exp_fast((t[k] - m_t) * inv_t);
      b_rest_s += k == argmax_s ? acc_t(0) : e_s[k];
      b_rest_st += k == argmax_s ? acc_t(0) : e_st[k];
      b_rest_tt += k == argmax_t ? acc_t(0) : e_tt[k];
      b_sum_s += s[k];
    }
    rest_s += b_rest_s, rest_st += b_rest_st, rest_tt += b_rest_tt, sum_s += b_sum_s;
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
  const double log_z_s = std::log1p(rest_s), log_z_st = std::log1p(rest_st), log_z_tt = std::log1p(rest_tt);
  RowConstants<acc_t> c{};
  c.m_s = m_s, c.m_t = m_t, c.inv_t = inv_t;
  c.log_z_s = acc_t(log_z_s), c.log_z_st = acc_t(log_z_st), c.log_z_tt = acc_t(log_z_tt);
  c.inv_z_s = acc_t(1.0 / (1.0 + rest_s)), c.inv_z_st = acc_t(1.0 / (1.0 + rest_st));
  c.inv_z_tt = acc_t(1.0 / (1.0 + rest_tt));
  c.kd_scale = no_teacher ? acc_t(0) : alpha * temperature, c.ce_scale = 1 - alpha, c.eps = eps, c.smooth = eps / acc_t(K);
  c.skip_a = argmax_s, c.skip_b = argmax_t;

  const double smooth_term = eps > 0 ? eps * (double(m_s) - sum_s / double(K)) : 0.0;  // avoids 0 * -inf
  bool valid;
  double ce;
  c.q_mass = 1;
  c.label = -1;
  if (q != nullptr) {
    valid = std::fabs(sum_q - 1.0) <= kSoftTargetTol && neg_q == 0;
    c.q_mass = acc_t((1 - eps) * sum_q + eps);
    ce = double(c.q_mass) * log_z_s + (1 - eps) * (double(m_s) * sum_q - sum_qs) + smooth_term;
  } else {
    valid = label >= 0 && label < K;
    c.label = label;
    const double margin = valid ? double(m_s - s[label]) : 0.0;  // m_s - s_label >= 0
    ce = log_z_s + (1 - eps) * margin + smooth_term;
    c.p_label_m1 = expm1_accurate(acc_t(-(log_z_s + margin)));  // p_label - 1 from the accurate log p
  }
  if (!valid) ce = std::numeric_limits<double>::quiet_NaN();
  c.poison = valid && !bad_teacher ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN();

  double kl = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kSumBlock) {
    const int64_t k1 = min_of(K, k0 + kSumBlock);
    if (grad == nullptr) {
      kl += kl_and_grad_block<false, false>(s, t, q, e_s, e_st, e_tt, c, k0, k1, grad);
    } else if (q != nullptr) {
      kl += kl_and_grad_block<true, true>(s, t, q, e_s, e_st, e_tt, c, k0, k1, grad);
    } else {
      kl += kl_and_grad_block<true, false>(s, t, q, e_s, e_st, e_tt, c, k0, k1, grad);
    }
  }
  kl_and_grad_scalar(s, t, q, c, argmax_s, kl, grad);
  if (argmax_t != argmax_s) kl_and_grad_scalar(s, t, q, c, argmax_t, kl, grad);
  const double kd = bad_teacher ? std::numeric_limits<double>::quiet_NaN()
                    : no_teacher ? 0.0 : double(temperature) * double(temperature) * kl;
  return {double(alpha) * kd + (1 - double(alpha)) * ce, kd, ce};
}

// The entry point declared in kd_loss_cpu_kernels.h, instantiated for float and double.
template <typename acc_t>
void kd_ce_row_entry(const acc_t* s, const acc_t* t, const acc_t* q, int64_t label, int64_t K, acc_t alpha,
                     acc_t temperature, acc_t eps, acc_t* scratch, acc_t* grad, double out[3]) {
  const RowResult r = kd_ce_row<acc_t>(s, t, q, label, K, alpha, temperature, eps, scratch, grad);
  out[0] = r.total, out[1] = r.kd, out[2] = r.ce;
}
template void kd_ce_row_entry<float>(const float*, const float*, const float*, int64_t, int64_t, float, float, float,
                                     float*, float*, double[3]);
template void kd_ce_row_entry<double>(const double*, const double*, const double*, int64_t, int64_t, double, double,
                                      double, double*, double*, double[3]);

}  // namespace DVFL_CPU_CAPABILITY
}  // namespace dvfl
