// Launch code of the focal-modulation kernels, for both devices: buffers, GEMMs through ATen (oneDNN
// / MKL on CPU, AMX in bfloat16 where the CPU has it; cuBLAS on CUDA), and the kernels over their
// work units: the CPU kernels (focal_cpu_kernels.h) in parallel loops, the CUDA kernels
// (focal_cuda.cu, in builds with CUDA) on the current stream. Both take the same argument blocks.
//
// Spatial context: one pass per level over image rows (depthwise k x k, GELU, gate, accumulate,
//   fused; z and g read by stride), then one pass adding the global term and writing the output.
// Temporal context: per level, the GEMMs of the rows (N*H*W, C) (a strided 2-D view of z_t, no copy)
//   with the k taps: y[j] = z @ W_j^T (tap_products: tap-major for bf16, one stacked GEMM otherwise). A tap's product for frame t sits in the
//   row one frame (H*W rows) away, so the epilogue sums k shifted rows of y (contiguous runs per tap),
//   masked at the clip's ends, and applies GELU, the gate and the accumulation; the last level's
//   epilogue also takes the mean over the T frames and writes the output.
// Backward: the same in reverse, with the transposed taps; the weight gradients are
//   per-row partials summed in row order (spatial) or one GEMM per tap and clip, summed in clip
//   order (temporal): both deterministic.
// bf16 GEMMs write bf16 (ATen's CPU matmul has no float output for bf16 inputs): each tap's product
// is rounded once before the float32 epilogue sums it. Element maths is float32 (float64 for float64).
#include "focal.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "focal_args.h"
#include "focal_cuda.h"
#include "../cpu_capability.h"
#include "../quant/quantize.h"

#if defined(DVFL_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define DVFL_CUDA_KERNEL(name) &focal::cuda::name
#else
#define DVFL_CUDA_KERNEL(name) nullptr
#endif

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

// The AVX-512 build where the CPU has it, else the AVX2 + FMA one, else the baseline (cpu_capability.h;
// DVFL_CPU_CAPABILITY=base forces the baseline, =avx2 caps it at AVX2).
const Kernels& kernels() {
  static const Kernels chosen = cpu_has_avx512() ? DVFL_KERNELS(avx512)
                                : cpu_has_avx2_fma() ? DVFL_KERNELS(avx2) : DVFL_KERNELS(base);
  return chosen;
}

template <typename Args>
using CpuKernel = void (*)(const Args&, int64_t, int64_t);
template <typename Args>
using CudaKernel = int (*)(const Args&, void*);

// Runs a kernel over `units` work units on `like`'s device: the CPU kernel in parallel over ranges of
// at least `grain` units, or the CUDA kernels on the current stream.
template <typename Args>
void run(const at::Tensor& like, CpuKernel<Args> cpu, std::type_identity_t<CudaKernel<Args>> cuda, const Args& a,
         int64_t units, int64_t grain) {
  if (like.is_cuda()) {
#if defined(DVFL_WITH_CUDA)
    const c10::cuda::CUDAGuard guard(like.device());
    const int error = cuda(a, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(error == 0, "dvfl focal CUDA kernel launch failed: ", focal::cuda::error_string(error));
    return;
#else
    (void)cuda;
    TORCH_CHECK(false, "dvfl_kernels._C was built without CUDA kernels");
#endif
  }
  at::parallel_for(0, units, grain, [&](int64_t b, int64_t e) { cpu(a, b, e); });
}

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::f32;
    case at::kDouble: return Dtype::f64;
    case at::kBFloat16: return Dtype::bf16;
    case at::kHalf: return Dtype::f16;  // CUDA only: on CPU float16 is computed in float32
    default: TORCH_CHECK(false, "dvfl cpu focal kernels: unsupported dtype ", t.scalar_type());
  }
}

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The kernels index channels with stride 1 and take any other strides; anything else (a permuted
// tensor, the stride-0 gradient of a sum) is copied once.
at::Tensor channel_dense(const at::Tensor& t) { return t.stride(3) == 1 || t.size(3) == 1 ? t : t.contiguous(); }

View view_of(const at::Tensor& t) { return View{t.const_data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// (N, H, W, C) as a (N*H*W, C) matrix with a leading dimension, without a copy where strides allow.
// Not for bf16 on CPU: ATen's bf16 GEMM there (torch 2.13, oneDNN on AMX) reads past C within a
// row's leading dimension for some C (21, 80, 98-100 measured, not 96 or 192), so a NaN or inf in the
// columns beside the slice turned products non-finite; such rows are copied dense first.
at::Tensor as_rows(const at::Tensor& t) {
  const int64_t N = t.size(0), H = t.size(1), W = t.size(2), C = t.size(3);
  const bool rows_uniform = (H == 1 || t.stride(1) == W * t.stride(2)) && (N == 1 || t.stride(0) == H * W * t.stride(2));
  const bool gemm_safe = t.is_cuda() || t.scalar_type() != at::kBFloat16 || t.stride(2) == C;
  if (t.stride(3) == 1 && rows_uniform && t.stride(2) >= C && gemm_safe) return t.as_strided({N * H * W, C}, {t.stride(2), 1});
  return t.contiguous().view({N * H * W, C});
}

int64_t grain_for(int64_t elements_per_unit) { return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_unit)); }

// Per group g, the sum of its `rows` rows of parts (groups * rows, width), in row order: (groups, width).
at::Tensor sum_row_groups(const at::Tensor& parts, int64_t groups, int64_t rows) {
  const int64_t width = parts.numel() / std::max<int64_t>(groups * rows, 1);
  at::Tensor out = at::empty({groups, width}, parts.options());
  const bool is_double = parts.scalar_type() == at::kDouble;
  if (parts.is_cuda()) {
#if defined(DVFL_WITH_CUDA)
    const c10::cuda::CUDAGuard guard(parts.device());
    const int error = focal::cuda::sum_row_groups(is_double, parts.const_data_ptr(), groups, rows, width,
                                                  out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(error == 0, "dvfl focal CUDA kernel launch failed: ", focal::cuda::error_string(error));
#endif
    return out;
  }
  const int64_t element = parts.element_size();
  const char* src = static_cast<const char*>(parts.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  if (groups == 1) {  // parallel over columns
    at::parallel_for(0, width, 256, [&](int64_t b, int64_t e) { kernels().sum_rows(is_double, src, rows, width, dst, b, e); });
  } else {
    at::parallel_for(0, groups, 1, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g) {
        kernels().sum_rows(is_double, src + g * rows * width * element, rows, width, dst + g * width * element, 0, width);
      }
    });
  }
  return out;
}

// The products of rows (R, C) with each of the k taps (k, C_out, C): y[j] = rows @ taps[j]^T, as
// strided (k, R, C_out). bf16: tap-major, one GEMM per tap, so the epilogue reads each tap's shifted
// rows as contiguous runs (measured faster at the nano's stage 1 on oneDNN/AMX); other dtypes: one
// GEMM against all taps stacked, (R, k * C_out), which was faster there in float32.
at::Tensor tap_products(const at::Tensor& rows, const at::Tensor& taps) {
  const int64_t k = taps.size(0), C_out = taps.size(1);
  if (rows.scalar_type() != at::kBFloat16) {
    return at::mm(rows, taps.reshape({k * C_out, -1}).t()).view({rows.size(0), k, C_out}).permute({1, 0, 2});
  }
  at::Tensor y = at::empty({k, rows.size(0), C_out}, rows.options());
  for (int64_t j = 0; j < k; ++j) {
    at::Tensor tap = y[j];
    at::mm_out(tap, rows, taps[j].t());
  }
  return y;
}

template <typename Args>
void set_taps(Args& a, const at::Tensor& y) {
  a.y = y.const_data_ptr(), a.y_tap = y.stride(0), a.y_row = y.stride(1);
}

at::Tensor gelu_grad(const at::Tensor& x) {
  return 0.5 * (1 + at::erf(x * M_SQRT1_2)) + x * at::exp(-0.5 * x * x) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
}

std::vector<at::Tensor> to_float(std::initializer_list<at::Tensor> ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.to(at::kFloat));
  return out;
}

// ---- the registered ops' argument checks ----------------------------------------------------------
// The Python API checks its arguments (dvfl_kernels/_checks.py) before it picks an op; a direct call
// (torch.ops.dvfl.*, a traced graph) gets the same guarantee here: a shape the kernels would read past,
// or a clip count num_frames does not divide, is an error naming the argument, never a wrong answer.
std::string shape_of(const at::Tensor& t) { return c10::str(t.sizes()); }

bool floating(const at::Tensor& t) {
  const auto d = t.scalar_type();
  return d == at::kFloat || d == at::kDouble || d == at::kBFloat16 || d == at::kHalf;
}

void check_activations(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, ": expected a 4-D (N, H, W, C) tensor, got shape ", shape_of(t));
  TORCH_CHECK_TYPE(floating(t), op, ": ", name, ": expected a float16/bfloat16/float32/float64 tensor, got ",
                   t.scalar_type());
}

void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref,
                at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device(), "; expected one device");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
                   ref_name, " has ", ref.scalar_type(), "; expected one dtype");
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, ": expected shape ", shape, ", got ", shape_of(t));
}

// num_frames >= 1 and dividing the batch of z (N = clips x frames).
void check_num_frames(const char* op, const char* z_name, const at::Tensor& z, int64_t num_frames) {
  TORCH_CHECK_VALUE(num_frames >= 1 && z.size(0) % num_frames == 0, op, ": ", z_name, ": the batch dimension N=",
                    z.size(0), " must be clips x num_frames, but num_frames=", num_frames, " does not divide it");
}

// z (N, H, W, C), g (N, H, W, levels + 1), weights[level] (C, C_in, [k,] k) with odd k, C_in = 1
// (spatial, square k x k) or C (temporal); num_frames (temporal) divides N. `op` names the op.
void check_context(const char* op, const at::Tensor& z, const at::Tensor& g, at::TensorList weights, bool spatial,
                   int64_t num_frames) {
  const char* z_name = spatial ? "z" : "z_t";  // the schema's names
  check_activations(op, z_name, z);
  const int64_t N = z.size(0), C = z.size(3), L = weights.size();
  TORCH_CHECK_VALUE(L >= 1, op, ": weights: expected a non-empty list of kernels (one per focal level)");
  if (!spatial) check_num_frames(op, z_name, z, num_frames);
  check_like(op, spatial ? "g" : "g_t", g, z_name, z, {N, z.size(1), z.size(2), L + 1});
  for (int64_t level = 0; level < L; ++level) {
    const at::Tensor& w = weights[level];
    const int64_t k = w.dim() > 0 ? w.size(-1) : 0;
    const bool shaped = spatial ? w.dim() == 4 && w.size(0) == C && w.size(1) == 1 && w.size(2) == k
                                : w.dim() == 3 && w.size(0) == C && w.size(1) == C;
    TORCH_CHECK_VALUE(shaped && k % 2 == 1, op, ": weights[", level, "]: expected shape (", C, ", ",
                      spatial ? std::string("1, k, k)") : std::to_string(C) + ", k)", " with an odd k, got ", shape_of(w));
    TORCH_CHECK_VALUE(w.device() == z.device(), op, ": weights[", level, "] is on ", w.device(), " but ", z_name, " is on ",
                      z.device(), "; expected one device");
    // float32 weights with half-precision activations: what autocast hands the op
    const bool autocast = w.scalar_type() == at::kFloat && (z.scalar_type() == at::kHalf || z.scalar_type() == at::kBFloat16);
    TORCH_CHECK_TYPE(w.scalar_type() == z.scalar_type() || autocast, op, ": weights[", level,
                     "] has dtype ", w.scalar_type(), " but ", z_name, " has ", z.scalar_type(), "; expected one dtype");
  }
}

// What a backward op gets besides the forward's inputs: the upstream gradient, shaped as z (any
// floating dtype: it is cast), and the forward's saved pre-activations and means.
void check_saved(const char* op, const at::Tensor& grad, const at::Tensor& z, int64_t levels, const at::Tensor& pre,
                 const at::Tensor& mean, at::IntArrayRef mean_shape) {
  TORCH_CHECK_VALUE(grad.device() == z.device() && floating(grad) && grad.sizes() == z.sizes(), op,
                    ": grad: expected a floating tensor of the activations' shape ", z.sizes(), " on ", z.device(), ", got ",
                    grad.scalar_type(), " of shape ", shape_of(grad), " on ", grad.device());
  const auto acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<int64_t> pre_shape{levels};
  pre_shape.insert(pre_shape.end(), z.sizes().begin(), z.sizes().end());
  TORCH_CHECK_VALUE(pre.sizes() == at::IntArrayRef(pre_shape) && pre.scalar_type() == acc && pre.device() == z.device(),
                    op, ": pre: expected the forward's saved ", acc, " pre-activations of shape ",
                    at::IntArrayRef(pre_shape), " (a forward with save=True), got ", pre.scalar_type(), " of shape ",
                    shape_of(pre));
  TORCH_CHECK_VALUE(mean.sizes() == mean_shape && mean.scalar_type() == acc && mean.device() == z.device(), op,
                    ": mean: expected the forward's saved ", acc, " means of shape ", mean_shape, ", got ",
                    mean.scalar_type(), " of shape ", shape_of(mean));
}

void check_modulate(const char* op, const at::Tensor& q, const at::Tensor& m_s, const at::Tensor& m_t) {
  check_activations(op, "q", q);
  check_like(op, "m_s", m_s, "q", q, q.sizes());
  check_like(op, "m_t", m_t, "q", q, q.sizes());
}

}  // namespace

const char* focal_cpu_capability() { return kernels().name; }

// ---- spatial context ----------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_context_kernels(const at::Tensor& z_in, const at::Tensor& g_in,
                                                                   const std::vector<at::Tensor>& weights,
                                                                   bool normalize, bool save) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf && !z_in.is_cuda()) {  // float16 has no fast CPU arithmetic: computed in float32
    auto f = to_float({z_in, g_in});
    auto [out, pre, mean] = spatial_context_kernels(f[0], f[1], weights, normalize, save);
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
    run(z, kernels().spatial_level, DVFL_CUDA_KERNEL(spatial_level), a, N * H, grain_for(W * C * k * k));
  }
  const at::Tensor mean = sum_row_groups(row_sums, N, H) / double(H * W);
  const at::Tensor mean_act = at::gelu(mean);
  at::Tensor out = at::empty({N, H, W, C}, z.options());
  focal::SpatialFinish f{a.dtype, N, H, W, C, L, a.scale, a.g, acc.const_data_ptr(), mean_act.const_data_ptr(),
                         out.mutable_data_ptr()};
  run(z, kernels().spatial_finish, DVFL_CUDA_KERNEL(spatial_finish), f, N * H, grain_for(W * C));
  return {out, pre, mean};
}

std::vector<at::Tensor> spatial_context_backward_kernels(const at::Tensor& grad_in, const at::Tensor& z_in,
                                                     const at::Tensor& g_in, const std::vector<at::Tensor>& weights,
                                                     const at::Tensor& pre, const at::Tensor& mean, bool normalize,
                                                     bool weights_grad) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf && !z_in.is_cuda()) {
    auto f = to_float({grad_in, z_in, g_in});
    auto grads = spatial_context_backward_kernels(f[0], f[1], f[2], weights, pre, mean, normalize, weights_grad);
    grads[0] = grads[0].to(at::kHalf), grads[1] = grads[1].to(at::kHalf);
    return grads;
  }
  const at::Tensor grad = channel_dense(grad_in.to(z_in.scalar_type())), z = channel_dense(z_in), g = channel_dense(g_in);
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), L = weights.size();
  const auto acc_opts = z.options().dtype(acc_type(z));
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
  // CUDA: dg's partial sums per block of 32 channels, added in block order by the kernel
  at::Tensor gate_part = at::empty({z.is_cuda() ? (C + 31) / 32 * N * H * W : 0}, acc_opts);
  a.gate_part = gate_part.mutable_data_ptr();
  run(z, kernels().spatial_backward_global, DVFL_CUDA_KERNEL(spatial_backward_global), a, N * H, grain_for(W * C));
  const at::Tensor dmean = sum_row_groups(row_part, N, H) * gelu_grad(mean) / double(H * W);
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
      a.k = k, a.weight = w.const_data_ptr();
      if (weights_grad) {  // frozen weights (weights_grad false): no weight-gradient terms at all
        part = at::empty({N * H, k * k, C}, acc_opts);
        a.weight_part = part.mutable_data_ptr();
      }
      a.dpre_next = dpre[(level + 1) % 2].const_data_ptr();
    }
    a.dpre_out = level >= 1 ? dpre[level % 2].mutable_data_ptr() : nullptr;
    run(z, kernels().spatial_backward_level, DVFL_CUDA_KERNEL(spatial_backward_level), a, N * H,
        grain_for(W * C * std::max<int64_t>(a.k * a.k, 1)));
    if (level < L && weights_grad) {
      const int64_t k = a.k;
      // contiguous (C, 1, k, k), the weight's own layout (and the strides the fake kernel promises)
      dweights[level] = sum_row_groups(part, 1, N * H).view({k * k, C}).t().to(weights[level].scalar_type()).contiguous().view({C, 1, k, k});
    }
  }
  std::vector<at::Tensor> result{dz, dg};
  if (weights_grad) result.insert(result.end(), dweights.begin(), dweights.end());
  return result;
}

// ---- temporal context ---------------------------------------------------------------------------
namespace {

// The temporal forward over levels whose tap products (k, R, C) of the level's input rows (R, C)
// come from `products(rows, level)` with `taps[level]` taps: the float GEMMs (temporal_context_kernels)
// or the int8 ones (temporal_context_int8).
template <typename Products>
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_forward(const at::Tensor& z, const at::Tensor& g,
                                                                const std::vector<int64_t>& taps, int64_t T,
                                                                bool normalize, bool save, const Products& products) {
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), L = taps.size();
  const int64_t B = N / T, rows = N * H * W, positions = B * H * W;
  const auto acc_opts = z.options().dtype(acc_type(z));
  at::Tensor src = as_rows(z);
  // the CUDA epilogue keeps the last level's A in acc between its two passes
  at::Tensor acc = L > 1 || z.is_cuda() ? at::empty({rows, C}, acc_opts) : at::Tensor();
  at::Tensor zbuf = L > 1 ? at::empty({rows, C}, z.options()) : at::Tensor();
  at::Tensor pre = at::empty({save ? L : 0, N, H, W, C}, acc_opts);
  at::Tensor mean = at::empty({B, H, W, C}, acc_opts);
  at::Tensor out = at::empty({N, H, W, C}, z.options());
  focal::TemporalForward a{};
  a.dtype = dtype_of(z);
  a.B = B, a.T = T, a.H = H, a.W = W, a.C = C, a.num_levels = L;
  a.scale = normalize ? 1.0 / double(L + 1) : 1.0;
  a.g = view_of(g);
  a.acc = acc.defined() ? acc.mutable_data_ptr() : nullptr;
  a.mean_out = mean.mutable_data_ptr(), a.out = out.mutable_data_ptr();
  for (int64_t level = 0; level < L; ++level) {
    const int64_t k = taps[level];
    const at::Tensor y = products(src, level);
    a.level = level, a.k = k;
    set_taps(a, y);
    a.z_out = level < L - 1 ? zbuf.mutable_data_ptr() : nullptr;
    a.pre_out = save ? pre[level].mutable_data_ptr() : nullptr;
    run(z, kernels().temporal_forward, DVFL_CUDA_KERNEL(temporal_forward), a, positions, grain_for(T * C * k));
    src = zbuf;
  }
  return {out, pre, mean};
}

// onednn::qlinear_pointwise (ATen's int8 GEMM on oneDNN: VNNI / AMX), called boxed: the op is
// registered by ATen's quantized library, without a C++ header of its own.
at::Tensor int8_gemm(const at::Tensor& q_rows, double x_scale, int64_t x_zero_point, const at::Tensor& packed,
                     const at::Tensor& w_scale, const at::Tensor& w_zero_point, at::ScalarType out_dtype) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_pointwise", "");
  std::vector<c10::IValue> stack{q_rows, x_scale, x_zero_point, packed, w_scale, w_zero_point, c10::IValue(),
                                 1.0, int64_t{0}, c10::IValue(out_dtype), std::string("none"),
                                 c10::List<std::optional<at::Scalar>>(), std::string("none")};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_context_kernels(const at::Tensor& z_in, const at::Tensor& g_in,
                                                                    const std::vector<at::Tensor>& weights,
                                                                    int64_t T, bool normalize, bool save) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf && !z_in.is_cuda()) {
    auto f = to_float({z_in, g_in});
    auto [out, pre, mean] = temporal_context_kernels(f[0], f[1], weights, T, normalize, save);
    return {out.to(at::kHalf), pre, mean};
  }
  const at::Tensor z = channel_dense(z_in), g = channel_dense(g_in);
  std::vector<int64_t> taps;
  for (const auto& w : weights) taps.push_back(w.size(-1));
  return temporal_forward(z, g, taps, T, normalize, save, [&](const at::Tensor& rows, int64_t level) {
    // tap j: (C_out, C_in) = W[:, :, j]
    return tap_products(rows, weights[level].to(z.scalar_type()).permute({2, 0, 1}));
  });
}

at::Tensor temporal_context_int8(const at::Tensor& z_in, const at::Tensor& g_in, at::TensorList packed,
                                 at::TensorList tap_scales, at::ArrayRef<double> input_scales,
                                 at::IntArrayRef input_zero_points, int64_t T, bool normalize) {
  const BelowAutograd guard;
  const int64_t L = packed.size();
  const char* op = "dvfl::temporal_context_int8";
  check_activations(op, "z_t", z_in);
  check_num_frames(op, "z_t", z_in, T);
  check_like(op, "g_t", g_in, "z_t", z_in, {z_in.size(0), z_in.size(1), z_in.size(2), L + 1});
  TORCH_CHECK(z_in.device().is_cpu() && (z_in.scalar_type() == at::kFloat || z_in.scalar_type() == at::kBFloat16),
              "dvfl::temporal_context_int8: z_t: expected float32 or bfloat16 on CPU, got ", z_in.scalar_type(), " on ",
              z_in.device());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(tap_scales.size()) == L && static_cast<int64_t>(input_scales.size()) == L &&
                  static_cast<int64_t>(input_zero_points.size()) == L,
              "dvfl::temporal_context_int8: expected one packed weight, tap scales, input scale and zero point per "
              "level, got ", L, ", ", tap_scales.size(), ", ", input_scales.size(), ", ", input_zero_points.size());
  const at::Tensor z = channel_dense(z_in), g = channel_dense(g_in);
  const int64_t C = z.size(3);
  std::vector<int64_t> taps;
  std::vector<at::Tensor> zero_points;
  for (int64_t level = 0; level < L; ++level) {
    const int64_t n = tap_scales[level].numel();
    TORCH_CHECK(n % C == 0 && n > 0, "dvfl::temporal_context_int8: tap_scales[", level, "]: expected k * C = k * ", C,
                " values, got ", n);
    taps.push_back(n / C);
    zero_points.push_back(at::zeros({n}, tap_scales[level].options().dtype(at::kLong)));
  }
  auto [out, pre, mean] = temporal_forward(z, g, taps, T, normalize, false, [&](const at::Tensor& rows, int64_t level) {
    // (R, k * C_out) in z's dtype, taps stacked tap-major: the same layout as tap_products' float32 GEMM
    const at::Tensor q_rows = quantize_u8(rows, input_scales[level], input_zero_points[level]);
    const at::Tensor y = int8_gemm(q_rows, input_scales[level], input_zero_points[level], packed[level],
                                   tap_scales[level], zero_points[level], z.scalar_type());
    return y.view({rows.size(0), taps[level], C}).permute({1, 0, 2});
  });
  return out;
}

std::vector<at::Tensor> temporal_context_backward_kernels(const at::Tensor& grad_in, const at::Tensor& z_in,
                                                      const at::Tensor& g_in, const std::vector<at::Tensor>& weights,
                                                      int64_t T, const at::Tensor& pre, const at::Tensor& mean,
                                                      bool normalize, bool weights_grad) {
  const BelowAutograd guard;
  if (z_in.scalar_type() == at::kHalf && !z_in.is_cuda()) {
    auto f = to_float({grad_in, z_in, g_in});
    auto grads = temporal_context_backward_kernels(f[0], f[1], f[2], weights, T, pre, mean, normalize, weights_grad);
    grads[0] = grads[0].to(at::kHalf), grads[1] = grads[1].to(at::kHalf);
    return grads;
  }
  const at::Tensor grad = channel_dense(grad_in.to(z_in.scalar_type())), z = channel_dense(z_in), g = channel_dense(g_in);
  const int64_t N = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3), L = weights.size();
  const int64_t B = N / T, HW = H * W, rows = N * HW, positions = B * HW;
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
  run(z, kernels().temporal_backward_top, DVFL_CUDA_KERNEL(temporal_backward_top), a, positions, grain_for(T * C));
  std::vector<at::Tensor> dweights(L);
  for (int64_t level = L - 1; level >= 0; --level) {
    const at::Tensor& dpre = dp[level % 2];  // d loss / d pre_{level+1}, (rows, C_out)
    const int64_t k = weights[level].size(-1), pad = k / 2;
    // tap j: (C_in, C_out) = W[:, :, j]^T
    const at::Tensor y = tap_products(dpre, weights[level].to(z.scalar_type()).permute({2, 1, 0}));
    a.level = level, a.k = k;
    set_taps(a, y);
    a.z_out = level >= 1 ? zbuf.mutable_data_ptr() : nullptr;
    a.dp_out = level >= 1 ? dp[(level - 1) % 2].mutable_data_ptr() : nullptr;
    a.dz_out = level == 0 ? dz.mutable_data_ptr() : nullptr;
    run(z, kernels().temporal_backward_level, DVFL_CUDA_KERNEL(temporal_backward_level), a, positions, grain_for(T * C * k));
    if (!weights_grad) continue;  // frozen weights: none of the tap GEMMs below
    // d W[:, :, j] = sum over clips b and frames t of dpre(b, t)^T z_level(b, t + j - pad): one batched
    // GEMM per tap over the clips' row blocks (strided views of (B, T*HW, C), no copy), then the sum
    // over clips in the accumulation type. One call per tap, not per tap and clip: at the demo's
    // batch of 16 the per-clip GEMMs were ~500 tiny calls a training step.
    const at::Tensor& z_level = level >= 1 ? zbuf : z_rows;
    const at::Tensor dpre_clips = dpre.view({B, T * HW, C}), z_clips = z_level.view({B, T * HW, C});
    std::vector<at::Tensor> taps;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t shift = j - pad, t0 = std::max<int64_t>(0, -shift), t1 = std::min<int64_t>(T, T - shift);
      if (t0 >= t1) {  // the tap reaches past every frame (k > 2T - 1): no products
        taps.push_back(at::zeros({C, C}, z.options().dtype(acc_type(z))));
        continue;
      }
      const int64_t count = (t1 - t0) * HW;
      const at::Tensor per_clip = at::bmm(dpre_clips.narrow(1, t0 * HW, count).transpose(1, 2),
                                          z_clips.narrow(1, (t0 + shift) * HW, count));
      taps.push_back(per_clip.sum(0, false, acc_type(z)));
    }
    dweights[level] = at::stack(taps, -1).to(weights[level].scalar_type());
  }
  std::vector<at::Tensor> result{dz, dg};
  if (weights_grad) result.insert(result.end(), dweights.begin(), dweights.end());
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

at::Tensor modulate_kernels(const at::Tensor& q_in, const at::Tensor& m_s_in, const at::Tensor& m_t_in) {
  const BelowAutograd guard;
  if (q_in.scalar_type() == at::kHalf && !q_in.is_cuda()) return q_in * m_s_in * m_t_in;
  const at::Tensor q = channel_dense(q_in), m_s = channel_dense(m_s_in), m_t = channel_dense(m_t_in);
  at::Tensor out = at::empty(q.sizes(), q.options());
  focal::Modulate a = modulate_args(q, m_s, m_t);
  a.out = out.mutable_data_ptr();
  run(q, kernels().modulate_forward, DVFL_CUDA_KERNEL(modulate_forward), a, a.N * a.H, grain_for(a.W * a.C));
  return out;
}

std::vector<at::Tensor> modulate_backward_kernels(const at::Tensor& grad_in, const at::Tensor& q_in,
                                              const at::Tensor& m_s_in, const at::Tensor& m_t_in) {
  const BelowAutograd guard;
  if (q_in.scalar_type() == at::kHalf && !q_in.is_cuda()) return {grad_in * m_s_in * m_t_in, grad_in * q_in * m_t_in, grad_in * q_in * m_s_in};
  const at::Tensor q = channel_dense(q_in), m_s = channel_dense(m_s_in), m_t = channel_dense(m_t_in);
  const at::Tensor grad = channel_dense(grad_in.to(q.scalar_type()));
  at::Tensor dq = at::empty(q.sizes(), q.options()), dm_s = at::empty(q.sizes(), q.options()),
             dm_t = at::empty(q.sizes(), q.options());
  focal::Modulate a = modulate_args(q, m_s, m_t);
  a.grad = view_of(grad);
  a.dq = dq.mutable_data_ptr(), a.dm_s = dm_s.mutable_data_ptr(), a.dm_t = dm_t.mutable_data_ptr();
  run(q, kernels().modulate_backward, DVFL_CUDA_KERNEL(modulate_backward), a, a.N * a.H, grain_for(3 * a.W * a.C));
  return {dq, dm_s, dm_t};
}

// ---- registration: the kernels of torch.ops.dvfl.* (schemas: csrc/ops.cpp) per dispatch key ----------
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_op(const at::Tensor& z, const at::Tensor& g, at::TensorList weights,
                                                          bool normalize, bool save) {
  check_context("dvfl::spatial_context", z, g, weights, true, 1);
  return spatial_context_kernels(z, g, weights.vec(), normalize, save);
}
std::vector<at::Tensor> spatial_backward_op(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& g,
                                            at::TensorList weights, const at::Tensor& pre, const at::Tensor& mean,
                                            bool normalize, bool weights_grad) {
  const char* op = "dvfl::spatial_context_backward";
  check_context(op, z, g, weights, true, 1);
  check_saved(op, grad, z, weights.size(), pre, mean, {z.size(0), z.size(3)});
  return spatial_context_backward_kernels(grad, z, g, weights.vec(), pre, mean, normalize, weights_grad);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_op(const at::Tensor& z_t, const at::Tensor& g_t,
                                                           at::TensorList weights, int64_t num_frames, bool normalize,
                                                           bool save) {
  check_context("dvfl::temporal_context", z_t, g_t, weights, false, num_frames);
  return temporal_context_kernels(z_t, g_t, weights.vec(), num_frames, normalize, save);
}
std::vector<at::Tensor> temporal_backward_op(const at::Tensor& grad, const at::Tensor& z_t, const at::Tensor& g_t,
                                             at::TensorList weights, int64_t num_frames, const at::Tensor& pre,
                                             const at::Tensor& mean, bool normalize, bool weights_grad) {
  const char* op = "dvfl::temporal_context_backward";
  check_context(op, z_t, g_t, weights, false, num_frames);
  check_saved(op, grad, z_t, weights.size(), pre, mean, {z_t.size(0) / num_frames, z_t.size(1), z_t.size(2), z_t.size(3)});
  return temporal_context_backward_kernels(grad, z_t, g_t, weights.vec(), num_frames, pre, mean, normalize,
                                           weights_grad);
}
at::Tensor modulate_op(const at::Tensor& q, const at::Tensor& m_s, const at::Tensor& m_t) {
  check_modulate("dvfl::modulate", q, m_s, m_t);
  return modulate_kernels(q, m_s, m_t);
}
std::vector<at::Tensor> modulate_backward_op(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& m_s,
                                             const at::Tensor& m_t) {
  check_modulate("dvfl::modulate_backward", q, m_s, m_t);
  TORCH_CHECK_VALUE(grad.device() == q.device() && floating(grad) && grad.sizes() == q.sizes(),
                    "dvfl::modulate_backward: grad: expected a floating tensor of q's shape ", q.sizes(), " on ",
                    q.device(), ", got ", grad.scalar_type(), " of shape ", shape_of(grad), " on ", grad.device());
  return modulate_backward_kernels(grad, q, m_s, m_t);
}

void register_focal(torch::Library& m) {
  m.impl("spatial_context", &spatial_op);
  m.impl("spatial_context_backward", &spatial_backward_op);
  m.impl("temporal_context", &temporal_op);
  m.impl("temporal_context_backward", &temporal_backward_op);
  m.impl("modulate", &modulate_op);
  m.impl("modulate_backward", &modulate_backward_op);
}

void register_focal_cpu_only(torch::Library& m) { m.impl("temporal_context_int8", &temporal_context_int8); }

}  // namespace

// The same host code launches the CPU kernels or, for CUDA tensors, the CUDA ones (run() above).
TORCH_LIBRARY_IMPL(dvfl, CPU, m) {
  register_focal(m);
  register_focal_cpu_only(m);
}
// temporal_context_int8's packed weights are oneDNN tensors: their dispatch key is MkldnnCPU.
TORCH_LIBRARY_IMPL(dvfl, MkldnnCPU, m) { register_focal_cpu_only(m); }
#if defined(DVFL_WITH_CUDA)
TORCH_LIBRARY_IMPL(dvfl, CUDA, m) { register_focal(m); }
#endif

}  // namespace dvfl
