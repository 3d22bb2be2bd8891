// Argument blocks of the focal-modulation kernels, the same for both devices: the CPU kernels
// (focal_cpu_kernels.h, one build per instruction set: focal_cpu_avx512.cpp, focal_cpu_avx2.cpp, focal_cpu_base.cpp,
// entry points declared here) and the CUDA kernels (focal_cuda.cu, entry points in focal_cuda.h).
// Plain data only: the launch code (focal.cpp) fills these from tensors; no kernel sees ATen.
//
// Layout: activations are channels-last (N, H, W, C) with channel stride 1. A `View` is such a
// tensor with any other strides (e.g. a slice of a projection's output). Buffers named "acc" hold
// the accumulation type (float, or double for float64 inputs) and are contiguous.
#pragma once

#include <cstdint>

namespace dvfl {
namespace focal {

enum class Dtype : int32_t { f32, f64, bf16, f16 };  // f16: CUDA only (the CPU computes it in f32)

struct View {
  const void* data;
  int64_t sn, sh, sw;  // element strides of N, H, W
};

// Spatial context, one depthwise level (0-based `level`: z_{level+1} = GELU(dwconv(z_level)),
// gate column `level`). Work unit: an image row (N * H of them; on CUDA, a row's block of channels).
struct SpatialLevel {
  Dtype dtype;
  int64_t N, H, W, C, level, num_levels, k;
  double scale;
  View z, g;             // the op's inputs (z is read at level 0)
  const void* weight;    // (k * k, C), acc
  const void* src;       // z_level, acc NHWC (level > 0)
  void* z_out;           // z_{level+1}, acc NHWC (all levels but the last)
  void* acc;             // running A_s, acc NHWC
  void* pre_out;         // pre-activation, acc NHWC, or null
  void* row_sums;        // last level: (N * H, C) sums of z_L per row, acc
};

// A_s + scale * g[L] * GELU(mean), written in the op's dtype (contiguous). Work unit: an image row.
struct SpatialFinish {
  Dtype dtype;
  int64_t N, H, W, C, num_levels;
  double scale;
  View g;
  const void* acc;           // acc NHWC
  const void* mean_act;      // GELU(mean), (N, C) acc
  void* out;                 // dtype NHWC
};

// Spatial backward. `global` pass (work unit: an image row): row_part[row] = sum_w scale*dA*g[L],
// dg[..., L] = sum_c scale*dA*GELU(mean). Level pass for z_level (level = L .. 0):
//   level >= 1: dz = scale*dA*g[level-1] + (level == L ? dmean : dwconv_level^T(dpre_next));
//               dg[..., level-1] = sum_c scale*dA*z_level; dpre_out = dz * GELU'(pre[level-1]);
//   level == 0: dz_out = dwconv_0^T(dpre_next);
//   level < L:  weight_part[row] += the row's share of d loss / d weight_level (where the weights need
//               a gradient; weight_part is null for frozen weights, and nothing of it is computed).
struct SpatialBackward {
  Dtype dtype;
  int64_t N, H, W, C, num_levels, level, k;
  double scale;
  View grad, z, g;
  const void* pre;         // (L, N, H, W, C) acc
  const void* mean_act;    // GELU(mean), (N, C) acc
  const void* dmean;       // d loss / d z_L from the global term, (N, C) acc
  const void* weight;      // weight of conv `level` (level < L), (k * k, C) acc
  const void* dpre_next;   // d loss / d pre_{level+1}, acc NHWC (level < L)
  void* dpre_out;          // d loss / d pre_level, acc NHWC (level >= 1)
  void* dz_out;            // d loss / d z, dtype NHWC (level == 0)
  void* dg;                // dtype (N, H, W, L + 1)
  void* row_part;          // global pass: (N * H, C) acc
  void* weight_part;       // (N * H, k * k, C) acc (level < L), or null: frozen weights
  void* gate_part;         // CUDA, level >= 1: (ceil(C / 32), N * H * W) acc, dg's per-channel-block sums
};

// Temporal context epilogues. Rows are the N * H * W positions, n = b * T + t; a work unit is one
// (b, h, w) position of a clip with all its T frames. `y` holds the k taps' GEMM outputs in the op's
// dtype, tap j of row r at y + r * y_row + j * y_tap: the product for row r's frame shifted by j - k/2.
// Forward, conv `level`: pre(t) = sum_j y[t + j - k/2][j]; z = GELU(pre); A = (level ? A : 0)
//   + scale*g[level]*z; the last level adds scale*g[L]*GELU(mean_t z) and writes `out`.
struct TemporalForward {
  Dtype dtype;
  int64_t B, T, H, W, C, level, num_levels, k;
  double scale;
  View g;
  const void* y;       // k taps x (rows, C), dtype
  int64_t y_row, y_tap;
  void* acc;           // (rows, C) acc (all but a single level)
  void* z_out;         // (rows, C) dtype: z_{level+1}, the next GEMM's input (not on the last level)
  void* pre_out;       // (rows, C) acc or null
  void* mean_out;      // last level: (B * H * W, C) acc, or null
  void* out;           // last level: (rows, C) dtype
};

// Temporal backward. `top` pass: the global term and level L (dmean, dg[L], dg[L-1], dpre_L into
// dp_out). Level pass after the taps' products y[j] = dpre_{level+1} @ W_level[:, :, j] (laid out as
// in the forward): dz(t) = sum_j y[t - (j - k/2)][j];
//   level >= 1: z_level = GELU(pre[level-1]) into z_out, dz += scale*dA*g[level-1],
//               dg[level-1] = sum_c scale*dA*z_level, dp_out = dz * GELU'(pre[level-1]);
//   level == 0: dz_out = dz.
struct TemporalBackward {
  Dtype dtype;
  int64_t B, T, H, W, C, level, num_levels, k;
  double scale;
  View grad, g;
  const void* pre;     // (L, rows, C) acc
  const void* mean;    // (B * H * W, C) acc
  const void* y;       // level pass: k taps x (rows, C), dtype
  int64_t y_row, y_tap;
  void* z_out;         // (rows, C) dtype
  void* dp_out;        // (rows, C) dtype
  void* dz_out;        // (rows, C) dtype
  void* dg;            // (rows, L + 1) dtype
};

// q * m_s * m_t and its gradients. Work unit: an image row.
struct Modulate {
  Dtype dtype;
  int64_t N, H, W, C;
  View q, m_s, m_t, grad;
  void* out;                 // forward
  void *dq, *dm_s, *dm_t;    // backward
};

#define DVFL_DECLARE_FOCAL_CPU(NS)                                                      \
  namespace NS {                                                                        \
  void spatial_level(const SpatialLevel& a, int64_t row_begin, int64_t row_end);         \
  void spatial_finish(const SpatialFinish& a, int64_t row_begin, int64_t row_end);       \
  void spatial_backward_global(const SpatialBackward& a, int64_t row_begin, int64_t row_end); \
  void spatial_backward_level(const SpatialBackward& a, int64_t row_begin, int64_t row_end);  \
  void temporal_forward(const TemporalForward& a, int64_t pos_begin, int64_t pos_end);   \
  void temporal_backward_top(const TemporalBackward& a, int64_t pos_begin, int64_t pos_end); \
  void temporal_backward_level(const TemporalBackward& a, int64_t pos_begin, int64_t pos_end); \
  void modulate_forward(const Modulate& a, int64_t row_begin, int64_t row_end);          \
  void modulate_backward(const Modulate& a, int64_t row_begin, int64_t row_end);         \
  void sum_rows(bool is_double, const void* parts, int64_t rows, int64_t width, void* out, \
                int64_t col_begin, int64_t col_end);                                    \
  }
DVFL_DECLARE_FOCAL_CPU(base)
DVFL_DECLARE_FOCAL_CPU(avx2)
DVFL_DECLARE_FOCAL_CPU(avx512)
#undef DVFL_DECLARE_FOCAL_CPU

}  // namespace focal
}  // namespace dvfl
