// Launch code of the CPU focal-modulation kernels: buffers, GEMMs through ATen (oneDNN / MKL; AMX
// in bfloat16 where the CPU has it), and the parallel loops over focal_cpu_kernels.h.
//
// Spatial context: one pass per level over image rows (depthwise k x k, GELU, gate, accumulate,
//   fused; z and g read by stride), then one pass adding the global term and writing the output.
// Temporal context: per level, ONE GEMM of the rows (N*H*W, C) (a strided 2-D view of z_t, no copy)
//   with all k taps' weights stacked, (k*C, C): y = z @ [W_0; ...; W_{k-1}]^T. A tap's product for
//   frame t sits in the row one frame (H*W rows) away, so the epilogue sums k shifted slices of y,
//   masked at the clip's ends, and applies GELU, the gate and the accumulation; the last level's
//   epilogue also takes the mean over the T frames and writes the output.
// Backward: the same in reverse, with the transposed taps in one GEMM; the weight gradients are
//   per-row partials summed in row order (spatial) or one GEMM per tap and clip, summed in clip
//   order (temporal): both deterministic.
// bf16 GEMMs write bf16 (ATen's CPU matmul has no float output for bf16 inputs): each tap's product
// is rounded once before the float32 epilogue sums it. Element maths is float32 (float64 for float64).
#include "focal_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <cstdlib>
#include <string>

#include "focal_cpu_args.h"

namespace dvfl {
namespace {

using focal::Dtype;
// The kernels' own buffer arithmetic (copy_, div_ ...) runs below autograd, so it works the same
// in inference mode, no-grad mode or training (the op's autograd is registered separately).
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;
using focal::View;

// Work per parallel task, in elements: enough that a task outweighs the cost of scheduling it.
constexpr int64_t kElementsPerTask = 1 << 15;

struct Kernels {
  const char* name;
  decltype(&focal::base::spatial_level) spatial_level;
  decltype(&focal::base::spatial_finish) spatial_finish;
  decltype(&focal::base::spatial_backward_global) spatial_backward_global;
  decltype(&focal::base::spatial_backward_level) spatial_backward_level;
  decltype(&focal::base::temporal_forward) temporal_forward;
  decltype(&focal::base::temporal_backward_top) temporal_backward_top;
  decltype(&focal::base::temporal_backward_level) temporal_backward_level;
  decltype(&focal::base::modulate_forward) modulate_forward;
  decltype(&focal::base::modulate_backward) modulate_backward;
  decltype(&focal::base::sum_rows) sum_rows;
};

#define DVFL_KERNELS(NS)                                                                             \
  Kernels {                                                                                          \
    #NS, &focal::NS::spatial_level, &focal::NS::spatial_finish, &focal::NS::spatial_backward_global, \
        &focal::NS::spatial_backward_level, &focal::NS::temporal_forward,                            \
        &focal::NS::temporal_backward_top, &focal::NS::temporal_backward_level,                      \
        &focal::NS::modulate_forward, &focal::NS::modulate_backward, &focal::NS::sum_rows            \
  }

// The AVX-512 build where the CPU has it; DVFL_CPU_CAPABILITY=base forces the baseline (for tests).
const Kernels& kernels() {
  static const Kernels chosen = [] {
    const char* forced = std::getenv("DVFL_CPU_CAPABILITY");
    const bool base_only = forced != nullptr && std::string(forced) == "base";
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    return avx512 && !base_only ? DVFL_KERNELS(avx512) : DVFL_KERNELS(base);
  }();
  return chosen;
}

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::f32;
    case at::kDouble: return Dtype::f64;
    case at::kBFloat16: return Dtype::bf16;
    default: TORCH_CHECK(false, "dvfl cpu focal kernels: unsupported dtype ", t.scalar_type());
  }
}

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The kernels index channels with stride 1 and take any other strides; anything else (a permuted
// tensor, the stride-0 gradient of a sum) is copied once.
at::Tensor channel_dense(const at::Tensor& t) { return t.stride(3) == 1 || t.size(3) == 1 ? t : t.contiguous(); }

View view_of(const at::Tensor& t) { return View{t.const_data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// (N, H, W, C) as a (N*H*W, C) matrix with a leading dimension, without a copy where strides allow.
at::Tensor as_rows(const at::Tensor& t) {
  const int64_t N = t.size(0), H = t.size(1), W = t.size(2), C = t.size(3);
  const bool rows_uniform = (H == 1 || t.stride(1) == W * t.stride(2)) && (N == 1 || t.stride(0) == H * W * t.stride(2));
  if (t.stride(3) == 1 && rows_uniform && t.stride(2) >= C) return t.as_strided({N * H * W, C}, {t.stride(2), 1});
  return t.contiguous().view({N * H * W, C});
}

int64_t grain_for(int64_t elements_per_unit) { return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_unit)); }

// Sums the rows of parts (rows, width) in row order, parallel over columns.
at::Tensor sum_rows(const at::Tensor& parts) {
  const int64_t rows = parts.size(0), width = parts.numel() / std::max<int64_t>(rows, 1);
  at::Tensor out = at::empty({width}, parts.options());
  const bool is_double = parts.scalar_type() == at::kDouble;
  at::parallel_for(0, width, 256, [&](int64_t b, int64_t e) {
    kernels().sum_rows(is_double, parts.const_data_ptr(), rows, width, out.mutable_data_ptr(), b, e);
  });
  return out;
}

// Per image n, the sum of its H rows of parts (N * H, C), in row order: (N, C).
at::Tensor sum_image_rows(const at::Tensor& parts, int64_t N, int64_t H) {
  const int64_t C = parts.size(1);
  at::Tensor out = at::empty({N, C}, parts.options());
  const bool is_double = parts.scalar_type() == at::kDouble;
  const int64_t element = parts.element_size();
  const char* src = static_cast<const char*>(parts.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) kernels().sum_rows(is_double, src + n * H * C * element, H, C, dst + n * C * element, 0, C);
  });
  return out;
}

at::Tensor gelu_grad(const at::Tensor& x) {
  return 0.5 * (1 + at::erf(x * M_SQRT1_2)) + x * at::exp(-0.5 * x * x) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
}

std::vector<at::Tensor> to_float(std::initializer_list<at::Tensor> ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.to(at::kFloat));
  return out;
}

}  // namespace

const char* focal_cpu_capability() { return kernels().name; }

// ---- spatial context ----------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_context_cpu(const at::Tensor& z_in, const at::Tensor& g_in,
                                                                   const std::vector<at::Tensor>& weights,
                                                                   bool normalize, bool save) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf) {  // float16 has no fast CPU arithmetic: computed in float32
    auto f = to_float({z_in, g_in});
    auto [out, pre, mean] = spatial_context_cpu(f[0], f[1], weights, normalize, save);
    return {out.to(at::kHalf), pre, mean};
  }
  const at::Tensor z = channel_dense(z_in), g = channel_dense(g_in);
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), L = weights.size();
  const auto acc_opts = z.options().dtype(acc_type(z));
  at::Tensor acc = at::empty({N, H, W, C}, acc_opts);
  at::Tensor pre = at::empty({save ? L : 0, N, H, W, C}, acc_opts);
  at::Tensor row_sums = at::empty({N * H, C}, acc_opts);
  at::Tensor zbuf[2] = {L > 1 ? at::empty({N, H, W, C}, acc_opts) : at::Tensor(),
                        L > 2 ? at::empty({N, H, W, C}, acc_opts) : at::Tensor()};
  focal::SpatialLevel a{};
  a.dtype = dtype_of(z);
  a.N = N, a.H = H, a.W = W, a.C = C, a.num_levels = L;
  a.scale = normalize ? 1.0 / double(L + 1) : 1.0;
  a.z = view_of(z), a.g = view_of(g);
  a.acc = acc.mutable_data_ptr();
  a.row_sums = row_sums.mutable_data_ptr();
  for (int64_t level = 0; level < L; ++level) {
    const int64_t k = weights[level].size(-1);
    const at::Tensor w = weights[level].to(acc_type(z)).reshape({C, k * k}).t().contiguous();
    a.level = level, a.k = k, a.weight = w.const_data_ptr();
    a.src = level > 0 ? zbuf[(level - 1) % 2].const_data_ptr() : nullptr;
    a.z_out = level < L - 1 ? zbuf[level % 2].mutable_data_ptr() : nullptr;
    a.pre_out = save ? pre[level].mutable_data_ptr() : nullptr;
    at::parallel_for(0, N * H, grain_for(W * C * k * k), [&](int64_t b, int64_t e) { kernels().spatial_level(a, b, e); });
  }
  const at::Tensor mean = sum_image_rows(row_sums, N, H) / double(H * W);
  const at::Tensor mean_act = at::gelu(mean);
  at::Tensor out = at::empty({N, H, W, C}, z.options());
  focal::SpatialFinish f{a.dtype, N, H, W, C, L, a.scale, a.g, acc.const_data_ptr(), mean_act.const_data_ptr(),
                         out.mutable_data_ptr()};
  at::parallel_for(0, N * H, grain_for(W * C), [&](int64_t b, int64_t e) { kernels().spatial_finish(f, b, e); });
  return {out, pre, mean};
}

std::vector<at::Tensor> spatial_context_backward_cpu(const at::Tensor& grad_in, const at::Tensor& z_in,
                                                     const at::Tensor& g_in, const std::vector<at::Tensor>& weights,
                                                     const at::Tensor& pre, const at::Tensor& mean, bool normalize) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf) {
    auto f = to_float({grad_in, z_in, g_in});
    auto grads = spatial_context_backward_cpu(f[0], f[1], f[2], weights, pre, mean, normalize);
    grads[0] = grads[0].to(at::kHalf), grads[1] = grads[1].to(at::kHalf);
    return grads;
  }
  const at::Tensor grad = channel_dense(grad_in.to(z_in.scalar_type())), z = channel_dense(z_in), g = channel_dense(g_in);
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), L = weights.size();
  const auto acc_opts = z.options().dtype(acc_type(z));
  TORCH_CHECK(pre.size(0) == L, "dvfl::spatial_context_backward: the forward saved no pre-activations");
  at::Tensor dz = at::empty({N, H, W, C}, z.options());
  at::Tensor dg = at::empty({N, H, W, L + 1}, z.options());
  const at::Tensor mean_act = at::gelu(mean);
  at::Tensor row_part = at::empty({N * H, C}, acc_opts);
  focal::SpatialBackward a{};
  a.dtype = dtype_of(z);
  a.N = N, a.H = H, a.W = W, a.C = C, a.num_levels = L;
  a.scale = normalize ? 1.0 / double(L + 1) : 1.0;
  a.grad = view_of(grad), a.z = view_of(z), a.g = view_of(g);
  a.pre = pre.const_data_ptr(), a.mean_act = mean_act.const_data_ptr();
  a.dg = dg.mutable_data_ptr(), a.dz_out = dz.mutable_data_ptr(), a.row_part = row_part.mutable_data_ptr();
  at::parallel_for(0, N * H, grain_for(W * C), [&](int64_t b, int64_t e) { kernels().spatial_backward_global(a, b, e); });
  const at::Tensor dmean = sum_image_rows(row_part, N, H) * gelu_grad(mean) / double(H * W);
  a.dmean = dmean.const_data_ptr();
  std::vector<at::Tensor> dweights(L);
  at::Tensor dpre[2];  // d loss / d pre of the level being done and of the one above it
  for (int64_t level = std::max<int64_t>(L - 1, 1); level <= L; ++level) dpre[level % 2] = at::empty({N, H, W, C}, acc_opts);
  for (int64_t level = L; level >= 0; --level) {
    at::Tensor w, part;
    a.level = level, a.k = 0, a.weight = nullptr, a.dpre_next = nullptr, a.weight_part = nullptr;
    if (level < L) {
      const int64_t k = weights[level].size(-1);
      w = weights[level].to(acc_type(z)).reshape({C, k * k}).t().contiguous();
      part = at::empty({N * H, k * k, C}, acc_opts);
      a.k = k, a.weight = w.const_data_ptr(), a.weight_part = part.mutable_data_ptr();
      a.dpre_next = dpre[(level + 1) % 2].const_data_ptr();
    }
    a.dpre_out = level >= 1 ? dpre[level % 2].mutable_data_ptr() : nullptr;
    at::parallel_for(0, N * H, grain_for(W * C * std::max<int64_t>(a.k * a.k, 1)),
                     [&](int64_t b, int64_t e) { kernels().spatial_backward_level(a, b, e); });
    if (level < L) {
      const int64_t k = a.k;
      // contiguous (C, 1, k, k), the weight's own layout (and the strides the fake kernel promises)
      dweights[level] = sum_rows(part).view({k * k, C}).t().to(weights[level].scalar_type()).contiguous().view({C, 1, k, k});
    }
  }
  std::vector<at::Tensor> result{dz, dg};
  result.insert(result.end(), dweights.begin(), dweights.end());
  return result;
}

// ---- temporal context ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_context_cpu(const at::Tensor& z_in, const at::Tensor& g_in,
                                                                    const std::vector<at::Tensor>& weights,
                                                                    int64_t T, bool normalize, bool save) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf) {
    auto f = to_float({z_in, g_in});
    auto [out, pre, mean] = temporal_context_cpu(f[0], f[1], weights, T, normalize, save);
    return {out.to(at::kHalf), pre, mean};
  }
  const at::Tensor z = channel_dense(z_in), g = channel_dense(g_in);
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), L = weights.size();
  const int64_t B = N / T, rows = N * H * W, positions = B * H * W;
  const auto acc_opts = z.options().dtype(acc_type(z));
  at::Tensor src = as_rows(z);
  at::Tensor acc = L > 1 ? at::empty({rows, C}, acc_opts) : at::Tensor();
  at::Tensor zbuf = L > 1 ? at::empty({rows, C}, z.options()) : at::Tensor();
  at::Tensor pre = at::empty({save ? L : 0, N, H, W, C}, acc_opts);
  at::Tensor mean = at::empty({B, H, W, C}, acc_opts);
  at::Tensor out = at::empty({N, H, W, C}, z.options());
  focal::TemporalForward a{};
  a.dtype = dtype_of(z);
  a.B = B, a.T = T, a.H = H, a.W = W, a.C = C, a.num_levels = L;
  a.scale = normalize ? 1.0 / double(L + 1) : 1.0;
  a.g = view_of(g);
  a.acc = L > 1 ? acc.mutable_data_ptr() : nullptr;
  a.mean_out = mean.mutable_data_ptr(), a.out = out.mutable_data_ptr();
  for (int64_t level = 0; level < L; ++level) {
    const int64_t k = weights[level].size(-1);
    // (k*C_out, C_in): row j*C + o holds W[o, :, j]
    const at::Tensor stacked = weights[level].to(z.scalar_type()).permute({2, 0, 1}).reshape({k * C, C});
    const at::Tensor y = at::mm(src, stacked.t());
    a.level = level, a.k = k, a.y = y.const_data_ptr();
    a.z_out = level < L - 1 ? zbuf.mutable_data_ptr() : nullptr;
    a.pre_out = save ? pre[level].mutable_data_ptr() : nullptr;
    at::parallel_for(0, positions, grain_for(T * C * k), [&](int64_t b, int64_t e) { kernels().temporal_forward(a, b, e); });
    src = zbuf;
  }
  return {out, pre, mean};
}

std::vector<at::Tensor> temporal_context_backward_cpu(const at::Tensor& grad_in, const at::Tensor& z_in,
                                                      const at::Tensor& g_in, const std::vector<at::Tensor>& weights,
                                                      int64_t T, const at::Tensor& pre, const at::Tensor& mean,
                                                      bool normalize) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf) {
    auto f = to_float({grad_in, z_in, g_in});
    auto grads = temporal_context_backward_cpu(f[0], f[1], f[2], weights, T, pre, mean, normalize);
    grads[0] = grads[0].to(at::kHalf), grads[1] = grads[1].to(at::kHalf);
    return grads;
  }
  const at::Tensor grad = channel_dense(grad_in.to(z_in.scalar_type())), z = channel_dense(z_in), g = channel_dense(g_in);
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), L = weights.size();
  const int64_t B = N / T, HW = H * W, rows = N * HW, positions = B * HW;
  TORCH_CHECK(pre.size(0) == L, "dvfl::temporal_context_backward: the forward saved no pre-activations");
  const at::Tensor z_rows = as_rows(z);
  at::Tensor dz = at::empty({N, H, W, C}, z.options());
  at::Tensor dg = at::empty({N, H, W, L + 1}, z.options());
  at::Tensor dp[2] = {at::empty({rows, C}, z.options()), L > 1 ? at::empty({rows, C}, z.options()) : at::Tensor()};
  at::Tensor zbuf = L > 1 ? at::empty({rows, C}, z.options()) : at::Tensor();
  focal::TemporalBackward a{};
  a.dtype = dtype_of(z);
  a.B = B, a.T = T, a.H = H, a.W = W, a.C = C, a.num_levels = L;
  a.scale = normalize ? 1.0 / double(L + 1) : 1.0;
  a.grad = view_of(grad), a.g = view_of(g);
  a.pre = pre.const_data_ptr(), a.mean = mean.const_data_ptr(), a.dg = dg.mutable_data_ptr();
  a.dp_out = dp[(L - 1) % 2].mutable_data_ptr();
  at::parallel_for(0, positions, grain_for(T * C), [&](int64_t b, int64_t e) { kernels().temporal_backward_top(a, b, e); });
  std::vector<at::Tensor> dweights(L);
  for (int64_t level = L - 1; level >= 0; --level) {
    const at::Tensor& dpre = dp[level % 2];  // d loss / d pre_{level+1}, (rows, C_out)
    const int64_t k = weights[level].size(-1), pad = k / 2;
    // (C_out, k*C_in): column j*C + i holds W[:, i, j]
    const at::Tensor stacked = weights[level].to(z.scalar_type()).permute({0, 2, 1}).reshape({C, k * C});
    const at::Tensor y = at::mm(dpre, stacked);
    a.level = level, a.k = k, a.y = y.const_data_ptr();
    a.z_out = level >= 1 ? zbuf.mutable_data_ptr() : nullptr;
    a.dp_out = level >= 1 ? dp[(level - 1) % 2].mutable_data_ptr() : nullptr;
    a.dz_out = level == 0 ? dz.mutable_data_ptr() : nullptr;
    at::parallel_for(0, positions, grain_for(T * C * k), [&](int64_t b, int64_t e) { kernels().temporal_backward_level(a, b, e); });
    // d W[:, :, j] = sum over clips and frames t of dpre(t)^T z_level(t + j - pad), in clip order
    const at::Tensor& z_level = level >= 1 ? zbuf : z_rows;
    std::vector<at::Tensor> taps;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t shift = j - pad, t0 = std::max<int64_t>(0, -shift), t1 = std::min<int64_t>(T, T - shift);
      at::Tensor tap = at::zeros({C, C}, z.options().dtype(acc_type(z)));
      for (int64_t b = 0; b < B && t0 < t1; ++b) {
        const int64_t first = (b * T + t0) * HW, count = (t1 - t0) * HW;
        tap = tap + at::mm(dpre.narrow(0, first, count).t(), z_level.narrow(0, first + shift * HW, count));
      }
      taps.push_back(tap);
    }
    dweights[level] = at::stack(taps, -1).to(weights[level].scalar_type());
  }
  std::vector<at::Tensor> result{dz, dg};
  result.insert(result.end(), dweights.begin(), dweights.end());
  return result;
}

// ---- modulate -----------------------------------------------------------------------------------
namespace {
focal::Modulate modulate_args(const at::Tensor& q, const at::Tensor& m_s, const at::Tensor& m_t) {
  focal::Modulate a{};
  a.dtype = dtype_of(q);
  a.N = q.size(0), a.H = q.size(1), a.W = q.size(2), a.C = q.size(3);
  a.q = view_of(q), a.m_s = view_of(m_s), a.m_t = view_of(m_t);
  return a;
}
}  // namespace

at::Tensor modulate_cpu(const at::Tensor& q_in, const at::Tensor& m_s_in, const at::Tensor& m_t_in) {
  const BelowAutograd guard;
  if (q_in.scalar_type() == at::kHalf) return q_in * m_s_in * m_t_in;
  const at::Tensor q = channel_dense(q_in), m_s = channel_dense(m_s_in), m_t = channel_dense(m_t_in);
  at::Tensor out = at::empty(q.sizes(), q.options());
  focal::Modulate a = modulate_args(q, m_s, m_t);
  a.out = out.mutable_data_ptr();
  at::parallel_for(0, a.N * a.H, grain_for(a.W * a.C), [&](int64_t b, int64_t e) { kernels().modulate_forward(a, b, e); });
  return out;
}

std::vector<at::Tensor> modulate_backward_cpu(const at::Tensor& grad_in, const at::Tensor& q_in,
                                              const at::Tensor& m_s_in, const at::Tensor& m_t_in) {
  const BelowAutograd guard;
  if (q_in.scalar_type() == at::kHalf) return {grad_in * m_s_in * m_t_in, grad_in * q_in * m_t_in, grad_in * q_in * m_s_in};
  const at::Tensor q = channel_dense(q_in), m_s = channel_dense(m_s_in), m_t = channel_dense(m_t_in);
  const at::Tensor grad = channel_dense(grad_in.to(q.scalar_type()));
  at::Tensor dq = at::empty(q.sizes(), q.options()), dm_s = at::empty(q.sizes(), q.options()),
             dm_t = at::empty(q.sizes(), q.options());
  focal::Modulate a = modulate_args(q, m_s, m_t);
  a.grad = view_of(grad);
  a.dq = dq.mutable_data_ptr(), a.dm_s = dm_s.mutable_data_ptr(), a.dm_t = dm_t.mutable_data_ptr();
  at::parallel_for(0, a.N * a.H, grain_for(3 * a.W * a.C), [&](int64_t b, int64_t e) { kernels().modulate_backward(a, b, e); });
  return {dq, dm_s, dm_t};
}

}  // namespace dvfl
