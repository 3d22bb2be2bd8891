// CUDA kernel of the fused KL + CE distillation loss: one thread block per row, one launch.
//
// Each thread keeps online (running-max) softmax statistics of its strided share of the row: the
// student at temperature 1 and T, the teacher at T, and the sums the losses need. A block
// reduction merges them (rescaling sums to the common max); then every thread sums its share of
// the KL and writes its share of d total / d s. Half and bfloat16 logits are read as float32 and everything accumulates in float32
// (float64 for float64 logits). Invalid rows (label outside [0, K), soft targets with a negative
// entry or not summing to 1) get NaN CE, total and gradient; a teacher row with a NaN or +inf logit
// gets NaN KD, total and gradient: that validates CUDA inputs without an extra launch or a host
// synchronisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kd_loss_cuda.h"

namespace dvfl {
namespace {

constexpr int kMaxThreads = 256;      // threads per row for large K (8 warps)
constexpr int kSmallKThreads = 128;   // below kLargeK a 128-thread block keeps most lanes busy
constexpr int64_t kLargeK = 1024;
constexpr int kStats = 10;            // fields of Stats
constexpr double kSoftTargetTol = 1e-4;  // as dvfl_kernels._checks.SOFT_TARGET_TOL
constexpr float kSeriesRange = 0.5f;  // |d| up to which e^d - 1 - d comes from its series

template <typename T> __device__ __forceinline__ T to_acc(T x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

// e^d - 1 - d for |d| <= kSeriesRange: d^2/2 (1 + d/3 (1 + d/4 (...))) to degree 10, accurate to a
// few ulps however small d is.
template <typename T>
__device__ __forceinline__ T exp_minus_1_minus_x(T d) {
  T p = T(1) + d / T(10);
#pragma unroll
  for (int n = 9; n >= 3; --n) p = T(1) + d / T(n) * p;
  return T(0.5) * d * d * p;
}

template <typename T>
__device__ __forceinline__ T expm1_accurate(T x) {
  return fabs(x) <= T(kSeriesRange) ? x + exp_minus_1_minus_x(x) : exp_acc(x) - T(1);
}

// A finite stand-in for -inf as the initial max: exp(m_old - m_new) is then 0 or 1, never NaN.
__device__ __forceinline__ double neg_big() { return -3.0e38; }

// Per-thread softmax statistics around the raw maxima (max(x / T) = max(x) / T). The sums are
// double (exps are computed in acc_t): at high temperature the KL depends on log-sums whose
// relative errors must stay far below float32 rounding.
template <typename acc_t>
struct Stats {
  double m_s, z_s, z_st;  // max of s; sum exp(s - m_s); sum exp((s - m_s) / T)
  double m_t, z_tt;       // max of t; sum exp((t - m_t) / T)
  double sum_s, sum_q, sum_qs, neg_q;  // sum_qs: exact products q * s; neg_q: negative soft targets
  double bad_t;  // teacher logits that are NaN or +inf: the row is no distribution (NaN kd and gradient)

  __device__ void merge(const Stats& o, acc_t inv_t) {
    const double ms = max(m_s, o.m_s), mt = max(m_t, o.m_t);
    z_s = z_s * exp_acc(acc_t(m_s - ms)) + o.z_s * exp_acc(acc_t(o.m_s - ms));
    z_st = z_st * exp_acc(acc_t(m_s - ms) * inv_t) + o.z_st * exp_acc(acc_t(o.m_s - ms) * inv_t);
    z_tt = z_tt * exp_acc(acc_t(m_t - mt) * inv_t) + o.z_tt * exp_acc(acc_t(o.m_t - mt) * inv_t);
    m_s = ms;
    m_t = mt;
    sum_s += o.sum_s;
    sum_q += o.sum_q;
    sum_qs += o.sum_qs;
    neg_q += o.neg_q;
    bad_t += o.bad_t;
  }
};

template <typename acc_t>
__device__ Stats<acc_t> shuffle_down(const Stats<acc_t>& s, int offset) {
  Stats<acc_t> o;
  o.m_s = __shfl_down_sync(0xffffffffu, s.m_s, offset);
  o.z_s = __shfl_down_sync(0xffffffffu, s.z_s, offset);
  o.z_st = __shfl_down_sync(0xffffffffu, s.z_st, offset);
  o.m_t = __shfl_down_sync(0xffffffffu, s.m_t, offset);
  o.z_tt = __shfl_down_sync(0xffffffffu, s.z_tt, offset);
  o.sum_s = __shfl_down_sync(0xffffffffu, s.sum_s, offset);
  o.sum_q = __shfl_down_sync(0xffffffffu, s.sum_q, offset);
  o.sum_qs = __shfl_down_sync(0xffffffffu, s.sum_qs, offset);
  o.neg_q = __shfl_down_sync(0xffffffffu, s.neg_q, offset);
  o.bad_t = __shfl_down_sync(0xffffffffu, s.bad_t, offset);
  return o;
}

// Sum of one double per thread over the block; the result is valid in thread 0.
__device__ double block_sum(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = (warp == 0 && lane < warps) ? scratch[lane] : 0.0;
  if (warp == 0)
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Per row: pass 1 gathers the softmax statistics; thread 0 forms CE (a sum of non-negative terms:
// log z_s + (1 - eps)(m_s - s_y) + eps (m_s - mean s)); pass 2 sums KL = sum_k (q_T - p_t - p_t d),
// d = log q_T - log p_t, as p_t (e^d - 1 - d) >= 0 where p_t > 0 (exact for close distributions) and
// q_T where the teacher rules a class out, and writes the gradient. Same formulas as the CPU and
// Triton kernels.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
kd_ce_rows_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                  const void* __restrict__ target, acc_t* __restrict__ losses, acc_t* __restrict__ grad,
                  int64_t rows, int64_t K, int64_t stride_s, int64_t stride_t, int64_t stride_y, bool soft,
                  bool compute_grad, acc_t alpha, acc_t temperature, acc_t eps) {
  const int64_t row = blockIdx.x;
  const scalar_t* s_row = student + row * stride_s;
  const scalar_t* t_row = teacher + row * stride_t;
  const acc_t* q_row = soft ? static_cast<const acc_t*>(target) + row * stride_y : nullptr;
  const acc_t inv_t = acc_t(1) / temperature;

  Stats<acc_t> st{neg_big(), 0, 0, neg_big(), 0, 0, 0, 0, 0, 0};
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const acc_t s = to_acc(s_row[k]), t = to_acc(t_row[k]);
    if (isnan(t) || (isinf(t) && t > acc_t(0))) st.bad_t += 1;
    if (s > st.m_s) {  // rescale this thread's sums to the new max
      st.z_s *= exp_acc(acc_t(st.m_s - s));
      st.z_st *= exp_acc(acc_t(st.m_s - s) * inv_t);
      st.m_s = s;
    }
    if (t > st.m_t) {
      st.z_tt *= exp_acc(acc_t(st.m_t - t) * inv_t);
      st.m_t = t;
    }
    const acc_t m_s = acc_t(st.m_s), m_t = acc_t(st.m_t);
    st.z_s += exp_acc(s - m_s);
    st.z_st += exp_acc((s - m_s) * inv_t);
    st.z_tt += exp_acc((t - m_t) * inv_t);
    st.sum_s += s;
    if (soft) {
      const acc_t q = q_row[k];
      st.sum_q += q;
      if (q > acc_t(0)) st.sum_qs += double(q) * double(s);
      if (q < acc_t(0)) st.neg_q += 1;
    }
  }

  __shared__ double partial[kMaxThreads / 32][kStats];
  __shared__ acc_t shared[8];
  __shared__ int64_t shared_label;
  __shared__ double shared_ce;
  __shared__ bool shared_bad_teacher;
  for (int offset = 16; offset > 0; offset >>= 1) st.merge(shuffle_down(st, offset), inv_t);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) {
    double* p = partial[warp];
    p[0] = st.m_s; p[1] = st.z_s; p[2] = st.z_st; p[3] = st.m_t; p[4] = st.z_tt;
    p[5] = st.sum_s; p[6] = st.sum_q; p[7] = st.sum_qs; p[8] = st.neg_q; p[9] = st.bad_t;
  }
  __syncthreads();
  if (warp == 0) {
    Stats<acc_t> w{neg_big(), 0, 0, neg_big(), 0, 0, 0, 0, 0, 0};
    if (lane < warps) {
      const double* p = partial[lane];
      w = Stats<acc_t>{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]};
    }
    for (int offset = 16; offset > 0; offset >>= 1) w.merge(shuffle_down(w, offset), inv_t);
    if (lane == 0) {
      const double log_z_s = log(w.z_s);
      const double smooth_term = eps > acc_t(0) ? eps * (w.m_s - w.sum_s / double(K)) : 0.0;  // avoids 0 * -inf
      bool valid;
      double ce, q_mass = 1, p_label_m1 = 0;
      int64_t label = -1;
      if (soft) {
        valid = fabs(w.sum_q - 1.0) <= kSoftTargetTol && w.neg_q == 0;
        q_mass = (1 - eps) * w.sum_q + eps;
        ce = q_mass * log_z_s + (1 - eps) * (w.m_s * w.sum_q - w.sum_qs) + smooth_term;
      } else {
        label = static_cast<const int64_t*>(target)[row * stride_y];
        valid = label >= 0 && label < K;
        const double margin = valid ? w.m_s - double(to_acc(s_row[label])) : 0.0;  // m_s - s_y >= 0
        ce = log_z_s + (1 - eps) * margin + smooth_term;
        p_label_m1 = expm1_accurate(acc_t(-(log_z_s + margin)));  // p_y - 1 from the accurate log p_y
      }
      shared[0] = acc_t(w.m_s);
      shared[1] = acc_t(w.m_t);
      shared[2] = acc_t(log_z_s);
      shared[3] = acc_t(log(w.z_st));
      // A teacher row with no finite logit (all -inf) is no distribution: its KD term is defined as
      // 0 (reference.kd_ce_loss); z_tt = 1 keeps its probabilities 0 instead of NaN.
      shared[4] = acc_t(w.z_tt == 0 ? 0.0 : log(w.z_tt));
      shared[5] = acc_t(w.z_tt == 0 ? 0 : 1);
      shared[6] = acc_t(q_mass);
      shared[7] = acc_t(p_label_m1);
      shared_label = label;
      shared_ce = valid ? ce : double(NAN);
      shared_bad_teacher = w.bad_t > 0;
    }
  }
  __syncthreads();
  const acc_t m_s = shared[0], m_t = shared[1], log_z_s = shared[2], log_z_st = shared[3], log_z_tt = shared[4];
  const acc_t q_mass = shared[6], p_label_m1 = shared[7];
  const int64_t label = shared_label;
  // an invalid target or a teacher row with NaN / +inf logits: NaN gradient (reference.kd_ce_loss)
  const bool bad_teacher = shared_bad_teacher;
  const acc_t poison = isnan(shared_ce) || bad_teacher ? acc_t(NAN) : acc_t(0);
  const bool no_teacher = shared[5] == acc_t(0);
  const acc_t kd_scale = no_teacher ? acc_t(0) : alpha * temperature, ce_scale = 1 - alpha, smooth = eps / acc_t(K);
  acc_t* g_row = grad + row * K;
  double kl = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const acc_t s = to_acc(s_row[k]), t = to_acc(t_row[k]);
    const acc_t log_q = (s - m_s) * inv_t - log_z_st, log_p = (t - m_t) * inv_t - log_z_tt;
    const acc_t q_student_t = exp_acc(log_q), p_teacher = exp_acc(log_p);
    const acc_t d = log_q - log_p;  // each subtracts its own max: accurate for small d
    const bool near = p_teacher > acc_t(0) && fabs(d) <= acc_t(kSeriesRange);
    const acc_t phi = near ? exp_minus_1_minus_x(d) : acc_t(0);
    // probabilities near 1 (few classes): the difference of the small complements
    const bool likely = q_student_t > acc_t(0.5) || p_teacher > acc_t(0.5);
    const acc_t far_diff = likely ? expm1_accurate(log_q) - expm1_accurate(log_p) : q_student_t - p_teacher;
    kl += near ? double(p_teacher * phi) : (p_teacher > acc_t(0) ? double(far_diff - p_teacher * d) : double(q_student_t));
    if (compute_grad) {
      const acc_t kd_diff = near ? p_teacher * (d + phi) : far_diff;
      const acc_t p = exp_acc(s - m_s - log_z_s);
      const acc_t ce_grad = soft ? q_mass * p - ((1 - eps) * q_row[k] + smooth) : (k == label ? p_label_m1 + eps : p) - smooth;
      g_row[k] = kd_scale * kd_diff + ce_scale * ce_grad + poison;
    }
  }
  __shared__ double scratch[kMaxThreads / 32];
  kl = block_sum(kl, scratch);
  if (threadIdx.x == 0) {
    const double kd = bad_teacher ? double(NAN) : no_teacher ? 0.0 : double(temperature) * double(temperature) * kl;
    const double ce = shared_ce;
    losses[row] = acc_t(double(alpha) * kd + (1 - double(alpha)) * ce);
    losses[rows + row] = acc_t(kd);
    losses[2 * rows + row] = acc_t(ce);
  }
}

template <typename scalar_t, typename acc_t>
cudaError_t launch(const KdCeLaunch& a, cudaStream_t stream) {
  const int threads = a.classes >= kLargeK ? kMaxThreads : kSmallKThreads;
  kd_ce_rows_kernel<scalar_t, acc_t><<<static_cast<unsigned>(a.rows), threads, 0, stream>>>(
      static_cast<const scalar_t*>(a.student), static_cast<const scalar_t*>(a.teacher), a.target,
      static_cast<acc_t*>(a.losses), static_cast<acc_t*>(a.grad), a.rows, a.classes, a.stride_s, a.stride_t,
      a.stride_y, a.soft, a.compute_grad, acc_t(a.alpha), acc_t(a.temperature), acc_t(a.label_smoothing));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_kd_ce_loss_rows(const KdCeLaunch& args, cudaStream_t stream) {
  switch (args.type) {
    case LogitType::kFloat32: return launch<float, float>(args, stream);
    case LogitType::kFloat64: return launch<double, double>(args, stream);
    case LogitType::kFloat16: return launch<__half, float>(args, stream);
    case LogitType::kBFloat16: return launch<__nv_bfloat16, float>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace dvfl
