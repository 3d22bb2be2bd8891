// CUDA kernel of the fused KL + CE distillation loss: one thread block per row, one launch.
//
// Each thread keeps online (running-max) softmax statistics of its strided share of the row: the
// student at temperature 1 and T, the teacher at T, and the sums the losses need. A block
// reduction merges them (rescaling sums to the common max); then every thread writes its share of
// d total / d s. Half and bfloat16 logits are read as float32 and everything accumulates in float32
// (float64 for float64 logits). Invalid rows (label outside [0, K), soft targets with a negative
// entry or not summing to 1)
// get NaN: that validates CUDA inputs without an extra launch or a host synchronisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kd_loss_cuda.h"

namespace dvfl {
namespace {

constexpr int kMaxThreads = 256;      // threads per row for large K (8 warps)
constexpr int kSmallKThreads = 128;   // below kLargeK a 128-thread block keeps most lanes busy
constexpr int64_t kLargeK = 1024;
constexpr int kStats = 10;  // fields of Stats
constexpr double kSoftTargetTol = 1e-4;

template <typename T> __device__ __forceinline__ T to_acc(T x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float expm1_acc(float x) { return expm1f(x); }
__device__ __forceinline__ double expm1_acc(double x) { return expm1(x); }
// |log q_T - log p_t| below which q_T - p_t is computed as p_t * expm1(.) (no cancellation)
constexpr float kExpm1Range = 0.5f;

// A finite stand-in for -inf as the initial max: exp(m_old - m_new) is then 0 or 1, never NaN.
__device__ __forceinline__ double neg_big() { return -3.0e38; }

// Softmax sums accumulate in double (exps are computed in acc_t): at high temperature the KL is a
// small difference of two log-sums whose relative errors must stay far below float32 rounding.
// Maxima are kept in double too so that one shuffle type serves every field.
template <typename acc_t>
struct Stats {
  double m_s, z_s, z_st;  // max of s; sum exp(s - m_s); sum exp((s - m_s) / T)
  double m_t, z_tt, a_tt;  // max of t; sum exp((t - m_t) / T); sum of that times (t - s) / T
  double sum_s, sum_q, sum_qs, neg_q;  // neg_q: negative soft-target entries

  __device__ void merge(const Stats& o, acc_t inv_t) {
    const double ms = max(m_s, o.m_s), mt = max(m_t, o.m_t);
    const double a = exp_acc(acc_t(m_s - ms)), b = exp_acc(acc_t(o.m_s - ms));
    z_s = z_s * a + o.z_s * b;
    z_st = z_st * exp_acc(acc_t(m_s - ms) * inv_t) + o.z_st * exp_acc(acc_t(o.m_s - ms) * inv_t);
    const double c = exp_acc(acc_t(m_t - mt) * inv_t), d = exp_acc(acc_t(o.m_t - mt) * inv_t);
    z_tt = z_tt * c + o.z_tt * d;
    a_tt = a_tt * c + o.a_tt * d;
    m_s = ms;
    m_t = mt;
    sum_s += o.sum_s;
    sum_q += o.sum_q;
    sum_qs += o.sum_qs;
    neg_q += o.neg_q;
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
  o.a_tt = __shfl_down_sync(0xffffffffu, s.a_tt, offset);
  o.sum_s = __shfl_down_sync(0xffffffffu, s.sum_s, offset);
  o.sum_q = __shfl_down_sync(0xffffffffu, s.sum_q, offset);
  o.sum_qs = __shfl_down_sync(0xffffffffu, s.sum_qs, offset);
  o.neg_q = __shfl_down_sync(0xffffffffu, s.neg_q, offset);
  return o;
}

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
    if (s > st.m_s) {  // rescale this thread's sums to the new max
      st.z_s *= exp_acc(acc_t(st.m_s - s));
      st.z_st *= exp_acc(acc_t(st.m_s - s) * inv_t);
      st.m_s = s;
    }
    if (t > st.m_t) {
      const double r = exp_acc(acc_t(st.m_t - t) * inv_t);
      st.z_tt *= r;
      st.a_tt *= r;
      st.m_t = t;
    }
    const acc_t m_s = acc_t(st.m_s), m_t = acc_t(st.m_t);
    st.z_s += exp_acc(s - m_s);
    st.z_st += exp_acc((s - m_s) * inv_t);
    const acc_t e = exp_acc((t - m_t) * inv_t);
    st.z_tt += e;
    if (e > acc_t(0)) st.a_tt += e * (t - s) * inv_t;  // classes the teacher rules out add 0
    st.sum_s += s;
    if (soft) {
      const acc_t q = q_row[k];
      st.sum_q += q;
      if (q > acc_t(0)) st.sum_qs += q * s;
      if (q < acc_t(0)) st.neg_q += 1;
    }
  }

  // Block reduction: warps by shuffles, then warp 0 over the per-warp results.
  __shared__ double partial[kMaxThreads / 32][kStats];
  __shared__ acc_t result[kStats];
  __shared__ int64_t result_label;
  for (int offset = 16; offset > 0; offset >>= 1) st.merge(shuffle_down(st, offset), inv_t);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) {
    double* p = partial[warp];
    p[0] = st.m_s; p[1] = st.z_s; p[2] = st.z_st; p[3] = st.m_t; p[4] = st.z_tt;
    p[5] = st.a_tt; p[6] = st.sum_s; p[7] = st.sum_q; p[8] = st.sum_qs; p[9] = st.neg_q;
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
      const double log_z_s = log(w.z_s), log_z_st = log(w.z_st), log_z_tt = log(w.z_tt);
      const double lse_s = w.m_s + log_z_s;
      // log z_st - log z_tt (both ~log K) as one log of a ratio keeps their small difference accurate
      const double lse_gap = (w.m_s - w.m_t) * inv_t + log(w.z_st / w.z_tt);  // lse(s/T) - lse(t/T)
      const double kd = double(temperature) * temperature * (w.a_tt / w.z_tt + lse_gap);
      const double mean_s_term = eps > acc_t(0) ? eps * w.sum_s / double(K) : 0.0;  // avoids 0 * -inf
      bool valid;
      double ce, q_mass = 1;
      int64_t label = -1;
      if (soft) {
        valid = fabs(w.sum_q - 1.0) <= kSoftTargetTol && w.neg_q == 0;
        q_mass = (1 - eps) * w.sum_q + eps;
        ce = lse_s * q_mass - ((1 - eps) * w.sum_qs + mean_s_term);
      } else {
        label = static_cast<const int64_t*>(target)[row * stride_y];
        valid = label >= 0 && label < K;
        ce = valid ? lse_s - (1 - eps) * to_acc(s_row[label]) - mean_s_term : 0.0;
      }
      const acc_t nan = acc_t(NAN);
      if (!valid) ce = NAN;
      losses[row] = acc_t(alpha * kd + (1 - alpha) * ce);
      losses[rows + row] = acc_t(kd);
      losses[2 * rows + row] = acc_t(ce);
      result[0] = lse_s;
      result[1] = w.m_s * inv_t + log_z_st;  // lse of s / T
      result[2] = w.m_t * inv_t + log_z_tt;  // lse of t / T
      result[3] = acc_t(q_mass);
      result[4] = valid ? acc_t(0) : nan;
      result[5] = acc_t(lse_gap);
      result_label = label;
    }
  }
  if (!compute_grad) return;
  __syncthreads();
  const acc_t lse_s = result[0], lse_st = result[1], lse_tt = result[2], q_mass = result[3], poison = result[4];
  const acc_t gap = result[5];
  const int64_t label = result_label;
  const acc_t kd_scale = alpha * temperature, ce_scale = 1 - alpha, smooth = eps / acc_t(K);
  acc_t* g_row = grad + row * K;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const acc_t s = to_acc(s_row[k]), t = to_acc(t_row[k]);
    const acc_t st = s * inv_t, tt = t * inv_t;
    const acc_t q_student_t = exp_acc(st - lse_st);
    const acc_t p_teacher = exp_acc(tt - lse_tt);
    const acc_t d = (st - tt) - gap;  // log q_T - log p_t
    const acc_t kd_diff = p_teacher > acc_t(0) && fabs(d) <= acc_t(kExpm1Range) ? p_teacher * expm1_acc(d)
                                                                                 : q_student_t - p_teacher;
    const acc_t p = exp_acc(s - lse_s);
    const acc_t tgt = soft ? (1 - eps) * q_row[k] + smooth : (k == label ? 1 - eps : acc_t(0)) + smooth;
    g_row[k] = kd_scale * kd_diff + ce_scale * (q_mass * p - tgt) + poison;
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
