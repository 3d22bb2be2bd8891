// CUDA kernels of the focal modulation (argument blocks: focal_args.h; entry points: focal_cuda.h).
// The per-block maths is focal_tile.h's, the code the CPU kernels run (and the CPU tests check in
// float64); here a thread's block is one channel. Activations are channels-last: a warp's 32 lanes
// take 32 adjacent channels, so every global access of a warp is one coalesced run.
//
// Spatial level: one thread block per (image row, 32 channels); the k rows it needs (the row and its
//   k//2 halo above and below, full width plus the halo left and right) are staged in shared memory
//   once, then 8 warps take the row's pixels in turn. The global mean comes from per-row partial sums
//   (a fixed-order reduction over the warps, no atomics), summed per image by sum_row_groups.
// Spatial backward: the transposed depthwise conv is the same tap loop over the staged gradient with
//   the kernel flipped (a negative weight stride); per-row weight-gradient partials and per-channel-
//   block gate-gradient partials are reduced in a fixed order: every gradient is deterministic.
// Temporal: the C x C taps are GEMMs through ATen (cuBLAS, in focal.cpp); these are the epilogues.
//   One thread per (position, channel) forward; one block per position backward, where the gate
//   gradients are sums over channels (a fixed-order block reduction).
// Modulate: one pass, 128-bit loads and stores where the tensors' strides allow.
#include <cuda_runtime.h>

#include <cstdint>

#include "focal_cuda.h"
#include "focal_tile.h"

namespace dvfl {
namespace focal {
namespace cuda {
namespace {

constexpr int kWarp = 32;           // channels per spatial block (one warp's lanes)
constexpr int kPixelWarps = 8;      // warps per spatial block, each taking every 8th pixel of the row
constexpr int kPositionThreads = 128;  // threads per temporal-backward block (one position)
constexpr int kElementThreads = 256;   // threads per block of the elementwise kernels
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cap their grid here

using One = FixedWidth<1>;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline unsigned grid_for(int64_t items, int threads) {
  const int64_t blocks = ceil_div(items, threads);
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

template <typename T>
__device__ __forceinline__ const T* at_view(const View& v, int64_t n, int64_t h, int64_t w) {
  return static_cast<const T*>(v.data) + n * v.sn + h * v.sh + w * v.sw;
}

// Sum of `value` over the block's threads (blockDim.x * blockDim.y of them), in a fixed tree order;
// every thread gets the result. `scratch` holds one acc_t per thread.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* scratch) {
  const int threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  __syncthreads();  // scratch may still be read by a previous call
  scratch[tid] = value;
  __syncthreads();
  for (int stride = 1; stride < threads; stride *= 2) {
    if (tid % (2 * stride) == 0 && tid + stride < threads) scratch[tid] += scratch[tid + stride];
    __syncthreads();
  }
  return scratch[0];
}

// Sum over the 32 lanes of a warp in a fixed butterfly order (the same bits on every run).
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Shared memory of one spatial block: k staged rows of (W + k - 1) pixels x 32 channels, then the
// row's z (W x 32) for the weight gradient, then one value per thread for reductions.
template <typename acc_t>
int64_t spatial_shared_bytes(int64_t k, int64_t W) {
  return ((k * (W + k - 1) + W) * kWarp + kWarp * kPixelWarps) * int64_t(sizeof(acc_t));
}

// Stages rows h - pad .. h + pad of `src` (channels c0 ..), all columns plus the halo, as acc_t;
// positions outside the image are left unset (the tap loops never read them).
template <typename src_t, typename acc_t>
__device__ void stage_rows(const src_t* src, int64_t sh, int64_t sw, int64_t H, int64_t W, int64_t C, int64_t h,
                           int64_t k, int64_t c0, acc_t* tile) {
  const int64_t pad = k / 2, width = W + 2 * pad;
  const int64_t items = k * width * kWarp;
  for (int64_t i = threadIdx.y * kWarp + threadIdx.x; i < items; i += kWarp * kPixelWarps) {
    const int64_t lane = i % kWarp, x = (i / kWarp) % width, dy = i / (kWarp * width);
    const int64_t hh = h + dy - pad, ww = x - pad, c = c0 + lane;
    if (hh >= 0 && hh < H && ww >= 0 && ww < W && c < C) tile[i] = load(src + hh * sh + ww * sw + c);
  }
  __syncthreads();
}

// ---- spatial context ----------------------------------------------------------------------------
template <typename in_t>
__global__ void spatial_level_kernel(SpatialLevel a) {
  using acc_t = typename Acc<in_t>::type;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* tile = reinterpret_cast<acc_t*>(shared_bytes);
  const int64_t H = a.H, W = a.W, C = a.C, k = a.k, pad = k / 2, width = W + 2 * pad;
  const int64_t row = blockIdx.x, n = row / H, h = row % H;
  const int64_t c0 = int64_t(blockIdx.y) * kWarp, lane = threadIdx.x, c = c0 + lane;
  const bool last = a.level == a.num_levels - 1;
  if (a.level == 0) {
    stage_rows(at_view<in_t>(a.z, n, 0, 0), a.z.sh, a.z.sw, H, W, C, h, k, c0, tile);
  } else {
    stage_rows(static_cast<const acc_t*>(a.src) + n * H * W * C, W * C, C, H, W, C, h, k, c0, tile);
  }
  const acc_t scale = acc_t(a.scale);
  const acc_t* weight = static_cast<const acc_t*>(a.weight);
  acc_t sum = 0;
  if (c < C) {
    const int64_t dy0 = pad - h > 0 ? pad - h : 0, dy1 = H + pad - h < k ? H + pad - h : k;
    for (int64_t w = threadIdx.y; w < W; w += kPixelWarps) {
      const int64_t dx0 = pad - w > 0 ? pad - w : 0, dx1 = W + pad - w < k ? W + pad - w : k;
      const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + a.level);
      const int64_t o = (row * W + w) * C + c;
      acc_t pre, z;
      depthwise_window<1>(tile + (pad * width + w + pad) * kWarp + lane, width * kWarp, int64_t(kWarp), pad, dy0,
                          dy1, dx0, dx1, weight + c, k, C, One{}, &pre);
      acc_t* acc = static_cast<acc_t*>(a.acc) + o;
      gelu_gate_accumulate(&pre, gate, a.level == 0 ? nullptr : acc, One{}, &z, acc);
      if (a.z_out) static_cast<acc_t*>(a.z_out)[o] = z;
      if (a.pre_out) static_cast<acc_t*>(a.pre_out)[o] = pre;
      sum += z;
    }
  }
  if (!last) return;
  // the row's sum of z_L per channel: the 8 warps' partial sums added in warp order
  acc_t* partial = tile + (k * width + W) * kWarp;
  __syncthreads();
  partial[threadIdx.y * kWarp + lane] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    acc_t total = 0;
    for (int y = 0; y < kPixelWarps; ++y) total += partial[y * kWarp + lane];
    static_cast<acc_t*>(a.row_sums)[row * C + c] = total;
  }
}

template <typename in_t>
__global__ void spatial_finish_kernel(SpatialFinish a) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t total = a.N * a.H * a.W * a.C;
  const acc_t scale = acc_t(a.scale);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % a.C, pixel = i / a.C, w = pixel % a.W, h = (pixel / a.W) % a.H, n = pixel / (a.W * a.H);
    const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + a.num_levels);
    const acc_t* mean_act = static_cast<const acc_t*>(a.mean_act);
    store(static_cast<in_t*>(a.out) + i, static_cast<const acc_t*>(a.acc)[i] + gate * mean_act[n * a.C + c]);
  }
}

// One block per image row, kPixelWarps warps: dg[..., L] per pixel (a warp's sum over channels) and
// row_part = the row's sum over pixels of scale * dA * g[L] per channel (warps added in order).
template <typename in_t>
__global__ void spatial_backward_global_kernel(SpatialBackward a) {
  using acc_t = typename Acc<in_t>::type;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* part = reinterpret_cast<acc_t*>(shared_bytes);  // (kPixelWarps, C)
  const int64_t H = a.H, W = a.W, C = a.C, L = a.num_levels, row = blockIdx.x, n = row / H, h = row % H;
  const int64_t lane = threadIdx.x, warp = threadIdx.y;
  const acc_t scale = acc_t(a.scale);
  const acc_t* gm = static_cast<const acc_t*>(a.mean_act) + n * C;
  for (int64_t c = lane; c < C; c += kWarp) part[warp * C + c] = 0;
  for (int64_t w = warp; w < W; w += kPixelWarps) {
    const in_t* dA = at_view<in_t>(a.grad, n, h, w);
    const acc_t gate = load(at_view<in_t>(a.g, n, h, w) + L);
    acc_t lanes = 0;
    for (int64_t c = lane; c < C; c += kWarp) global_term_grad(dA + c, gm + c, scale, gate, One{}, part + warp * C + c, &lanes);
    lanes = warp_sum(lanes);
    if (lane == 0) store(static_cast<in_t*>(a.dg) + (row * W + w) * (L + 1) + L, lanes);
  }
  __syncthreads();
  for (int64_t c = warp * kWarp + lane; c < C; c += kWarp * kPixelWarps) {
    acc_t total = 0;
    for (int y = 0; y < kPixelWarps; ++y) total += part[y * C + c];
    static_cast<acc_t*>(a.row_part)[row * C + c] = total;
  }
}

// One block per (image row, 32 channels). For z_level of the row: dz from above (the transposed conv
// of dpre_{level+1}, staged with its halo, or the global mean's gradient at level L), then dpre_level
// (level >= 1) or dz_out (level 0), the gate gradient's per-channel-block partial, and the row's
// weight-gradient partial sum_w dpre_{level+1}(shifted) * z_level.
template <typename in_t>
__global__ void spatial_backward_level_kernel(SpatialBackward a) {
  using acc_t = typename Acc<in_t>::type;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* tile = reinterpret_cast<acc_t*>(shared_bytes);
  const int64_t H = a.H, W = a.W, C = a.C, L = a.num_levels, level = a.level, k = a.k, pad = k / 2;
  const int64_t width = W + 2 * pad, row = blockIdx.x, n = row / H, h = row % H;
  const int64_t c0 = int64_t(blockIdx.y) * kWarp, lane = threadIdx.x, c = c0 + lane;
  const int64_t plane = H * W * C;
  acc_t* zrow = tile + k * width * kWarp;  // this row's z_level, (W, 32)
  acc_t* partial = zrow + W * kWarp;        // one value per thread
  const acc_t scale = acc_t(a.scale);
  const acc_t* weight = static_cast<const acc_t*>(a.weight);
  const acc_t* dpre_next = level < L ? static_cast<const acc_t*>(a.dpre_next) + n * plane : nullptr;
  if (level < L) stage_rows(dpre_next, W * C, C, H, W, C, h, k, c0, tile);
  const acc_t* pre = level >= 1 ? static_cast<const acc_t*>(a.pre) + (level - 1) * a.N * plane + row * W * C : nullptr;
  const acc_t gate_scale = level >= 1 ? scale : acc_t(0);
  const int64_t dy0 = pad - h > 0 ? pad - h : 0, dy1 = H + pad - h < k ? H + pad - h : k;
  for (int64_t w = threadIdx.y; w < W; w += kPixelWarps) {
    acc_t dgate = 0;
    if (c < C) {
      acc_t z, grad = 0, dz;
      if (level >= 1) {
        gelu_and_grad_block(pre + w * C + c, One{}, &z, &grad);
      } else {
        z = load(at_view<in_t>(a.z, n, h, w) + c);
      }
      zrow[w * kWarp + lane] = z;
      if (level < L) {  // the transposed conv: the forward's tap loop with the kernel flipped
        const int64_t dx0 = pad - w > 0 ? pad - w : 0, dx1 = W + pad - w < k ? W + pad - w : k;
        depthwise_window<1>(tile + (pad * width + w + pad) * kWarp + lane, width * kWarp, int64_t(kWarp), pad, dy0,
                            dy1, dx0, dx1, weight + (k * k - 1) * C + c, k, -C, One{}, &dz);
      } else {
        dz = static_cast<const acc_t*>(a.dmean)[n * C + c];
      }
      const int64_t o = (row * W + w) * C + c;
      if (level == 0) {
        store(static_cast<in_t*>(a.dz_out) + o, dz);
      } else {
        const acc_t gate = gate_scale * load(at_view<in_t>(a.g, n, h, w) + (level - 1));
        acc_t dpre;
        dgate = gate_backward(&z, &grad, &dz, at_view<in_t>(a.grad, n, h, w) + c, gate, scale, One{}, &dpre);
        static_cast<acc_t*>(a.dpre_out)[o] = dpre;
      }
    }
    if (level >= 1) {  // the warp holds this pixel's 32 channels: their sum is one partial of dg
      dgate = warp_sum(dgate);
      if (lane == 0) static_cast<acc_t*>(a.gate_part)[blockIdx.y * a.N * H * W + row * W + w] = dgate;
    }
  }
  if (level == L || a.weight_part == nullptr) return;  // the top level, or frozen weights: no weight gradient
  __syncthreads();  // zrow complete
  // weight gradient: tap (dy, dx) gets sum_w dpre_next(h - dy + pad, w - dx + pad) * z(h, w)
  acc_t* wpart = static_cast<acc_t*>(a.weight_part) + row * k * k * C;
  for (int64_t tap = 0; tap < k * k; ++tap) {
    const int64_t dy = tap / k, dx = tap % k, hh = h - dy + pad;
    acc_t sum = 0;
    if (c < C && hh >= 0 && hh < H) {
      for (int64_t w = threadIdx.y; w < W; w += kPixelWarps) {
        const int64_t ww = w - dx + pad;
        if (ww >= 0 && ww < W) sum += tile[((hh - h + pad) * width + ww + pad) * kWarp + lane] * zrow[w * kWarp + lane];
      }
    }
    __syncthreads();
    partial[threadIdx.y * kWarp + lane] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
      acc_t total = 0;
      for (int y = 0; y < kPixelWarps; ++y) total += partial[y * kWarp + lane];
      wpart[tap * C + c] = total;
    }
  }
}

// dg[pixel][level - 1] = the per-channel-block partials summed in block order.
template <typename in_t>
__global__ void spatial_gate_grad_kernel(SpatialBackward a) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t pixels = a.N * a.H * a.W, blocks = ceil_div(a.C, kWarp);
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pixels; p += int64_t(gridDim.x) * blockDim.x) {
    acc_t total = 0;
    for (int64_t b = 0; b < blocks; ++b) total += static_cast<const acc_t*>(a.gate_part)[b * pixels + p];
    store(static_cast<in_t*>(a.dg) + p * (a.num_levels + 1) + (a.level - 1), total);
  }
}

// ---- temporal context ---------------------------------------------------------------------------
// One thread per (position, channel), all T frames. The last level keeps A in `acc` between its two
// passes (the global term needs the mean over every frame first).
template <typename in_t>
__global__ void temporal_forward_kernel(TemporalForward a) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t T = a.T, HW = a.H * a.W, C = a.C, k = a.k, pad = k / 2, L = a.num_levels;
  const int64_t total = a.B * HW * C;
  const bool last = a.level == L - 1;
  const acc_t scale = acc_t(a.scale);
  const in_t* y = static_cast<const in_t*>(a.y);
  acc_t* acc = static_cast<acc_t*>(a.acc);
  const int64_t step = HW * a.y_row + a.y_tap;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, pos = i / C, b = pos / HW, p = pos % HW, h = p / a.W, w = p % a.W;
    acc_t zsum = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t, row = n * HW + p;
      const int64_t j0 = pad - t > 0 ? pad - t : 0, j1 = T + pad - t < k ? T + pad - t : k;
      const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + a.level);
      acc_t pre, z;
      sum_taps<1>(y + (row + (j0 - pad) * HW) * a.y_row + j0 * a.y_tap + c, step, j1 - j0, One{}, &pre);
      acc_t* value = acc + row * C + c;
      gelu_gate_accumulate(&pre, gate, a.level == 0 ? nullptr : value, One{}, &z, value);
      if (!last) store(static_cast<in_t*>(a.z_out) + row * C + c, z);
      if (a.pre_out) static_cast<acc_t*>(a.pre_out)[row * C + c] = pre;
      zsum += z;
    }
    if (!last) continue;
    const acc_t mean = zsum / acc_t(T);
    if (a.mean_out) static_cast<acc_t*>(a.mean_out)[pos * C + c] = mean;
    const acc_t mean_act = gelu(mean);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t, row = n * HW + p;
      const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + L);
      store(static_cast<in_t*>(a.out) + row * C + c, acc[row * C + c] + gate * mean_act);
    }
  }
}

// One block per position: the global term and level L (see TemporalBackward).
template <typename in_t>
__global__ void temporal_backward_top_kernel(TemporalBackward a) {
  using acc_t = typename Acc<in_t>::type;
  __shared__ acc_t scratch[kPositionThreads];
  const int64_t T = a.T, HW = a.H * a.W, C = a.C, L = a.num_levels, rows = a.B * T * HW;
  const int64_t pos = blockIdx.x, b = pos / HW, p = pos % HW, h = p / a.W, w = p % a.W;
  const acc_t scale = acc_t(a.scale);
  const acc_t* mean = static_cast<const acc_t*>(a.mean) + pos * C;
  const acc_t* pre_last = static_cast<const acc_t*>(a.pre) + (L - 1) * rows * C;
  in_t* dg = static_cast<in_t*>(a.dg);
  // dg[L] per frame: sum over channels of scale * dA * GELU(mean)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = b * T + t;
    const in_t* dA = at_view<in_t>(a.grad, n, h, w);
    const acc_t gate = load(at_view<in_t>(a.g, n, h, w) + L);
    acc_t lanes = 0, unused = 0;
    for (int64_t c = threadIdx.x; c < C; c += kPositionThreads) {
      acc_t gm, grad;
      gelu_and_grad_block(mean + c, One{}, &gm, &grad);
      global_term_grad(dA + c, &gm, scale, gate, One{}, &unused, &lanes);
    }
    lanes = block_sum(lanes, scratch);
    if (threadIdx.x == 0) store(dg + (n * HW + p) * (L + 1) + L, lanes);
  }
  // level L: dpre_L = (gate * dA + dmean) * GELU'(pre), dg[L - 1]
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = b * T + t, row = n * HW + p;
    const in_t* dA = at_view<in_t>(a.grad, n, h, w);
    const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + (L - 1));
    acc_t dgate = 0;
    for (int64_t c = threadIdx.x; c < C; c += kPositionThreads) {
      acc_t gm, gm_grad, dsum = 0, unused = 0;
      gelu_and_grad_block(mean + c, One{}, &gm, &gm_grad);
      for (int64_t s = 0; s < T; ++s) {  // d loss / d mean_c, recomputed per frame: no per-channel buffer
        const int64_t ns = b * T + s;
        global_term_grad(at_view<in_t>(a.grad, ns, h, w) + c, &gm, scale, load(at_view<in_t>(a.g, ns, h, w) + L),
                         One{}, &dsum, &unused);
      }
      const acc_t dmean = gm_grad * (dsum / acc_t(T));
      acc_t z, grad, dpre;
      gelu_and_grad_block(pre_last + row * C + c, One{}, &z, &grad);
      dgate += gate_backward(&z, &grad, &dmean, dA + c, gate, scale, One{}, &dpre);
      store(static_cast<in_t*>(a.dp_out) + row * C + c, dpre);
    }
    dgate = block_sum(dgate, scratch);
    if (threadIdx.x == 0) store(dg + row * (L + 1) + (L - 1), dgate);
  }
}

// One block per position: level `level`'s transposed taps, then its gate and GELU gradients.
template <typename in_t>
__global__ void temporal_backward_level_kernel(TemporalBackward a) {
  using acc_t = typename Acc<in_t>::type;
  __shared__ acc_t scratch[kPositionThreads];
  const int64_t T = a.T, HW = a.H * a.W, C = a.C, L = a.num_levels, k = a.k, pad = k / 2, level = a.level;
  const int64_t rows = a.B * T * HW, pos = blockIdx.x, b = pos / HW, p = pos % HW, h = p / a.W, w = p % a.W;
  const acc_t scale = acc_t(a.scale);
  const in_t* y = static_cast<const in_t*>(a.y);
  const int64_t step = -HW * a.y_row + a.y_tap;  // tap j + 1: the previous frame's row in the next tap
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = b * T + t, row = n * HW + p;
    const int64_t j0 = t + pad - T + 1 > 0 ? t + pad - T + 1 : 0, j1 = t + pad + 1 < k ? t + pad + 1 : k;
    const in_t* dA = at_view<in_t>(a.grad, n, h, w);
    const acc_t gate = level >= 1 ? scale * load(at_view<in_t>(a.g, n, h, w) + (level - 1)) : acc_t(0);
    acc_t dgate = 0;
    for (int64_t c = threadIdx.x; c < C; c += kPositionThreads) {
      acc_t dz;
      sum_taps<1>(y + (row - (j0 - pad) * HW) * a.y_row + j0 * a.y_tap + c, step, j1 - j0, One{}, &dz);
      if (level == 0) {
        store(static_cast<in_t*>(a.dz_out) + row * C + c, dz);
        continue;
      }
      acc_t z, grad, dpre;
      gelu_and_grad_block(static_cast<const acc_t*>(a.pre) + ((level - 1) * rows + row) * C + c, One{}, &z, &grad);
      dgate += gate_backward(&z, &grad, &dz, dA + c, gate, scale, One{}, &dpre);
      store(static_cast<in_t*>(a.z_out) + row * C + c, z);
      store(static_cast<in_t*>(a.dp_out) + row * C + c, dpre);
    }
    if (level == 0) continue;  // the same for every thread of the block: no divergent barrier
    dgate = block_sum(dgate, scratch);
    if (threadIdx.x == 0) store(static_cast<in_t*>(a.dg) + row * (L + 1) + (level - 1), dgate);
  }
}

// ---- modulate -----------------------------------------------------------------------------------
// kVec elements per thread: one 128-bit access per tensor where every pointer and stride allows
// (kVec = 16 bytes / element size), else kVec scalar accesses.
template <typename in_t>
struct alignas(16) Pack {
  static constexpr int kVec = 16 / sizeof(in_t);
  in_t v[kVec];
};

template <typename in_t>
__device__ __forceinline__ Pack<in_t> load_pack(const in_t* p, int64_t count, bool vector) {
  Pack<in_t> pack;
  if (vector) {
    pack = *reinterpret_cast<const Pack<in_t>*>(p);
  } else {
    for (int i = 0; i < Pack<in_t>::kVec; ++i) pack.v[i] = i < count ? p[i] : p[0];
  }
  return pack;
}

template <typename in_t>
__device__ __forceinline__ void store_pack(in_t* p, const Pack<in_t>& pack, int64_t count, bool vector) {
  if (vector) {
    *reinterpret_cast<Pack<in_t>*>(p) = pack;
  } else {
    for (int i = 0; i < count; ++i) p[i] = pack.v[i];
  }
}

template <typename in_t>
__global__ void modulate_kernel(Modulate a, bool vector, bool backward) {
  constexpr int kVec = Pack<in_t>::kVec;
  const int64_t groups = ceil_div(a.C, kVec), total = a.N * a.H * a.W * groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i % groups) * kVec, pixel = i / groups, w = pixel % a.W, h = (pixel / a.W) % a.H;
    const int64_t n = pixel / (a.W * a.H), count = a.C - c < kVec ? a.C - c : kVec, o = pixel * a.C + c;
    const Pack<in_t> q = load_pack(at_view<in_t>(a.q, n, h, w) + c, count, vector);
    const Pack<in_t> s = load_pack(at_view<in_t>(a.m_s, n, h, w) + c, count, vector);
    const Pack<in_t> t = load_pack(at_view<in_t>(a.m_t, n, h, w) + c, count, vector);
    if (!backward) {
      Pack<in_t> out;
      for (int j = 0; j < kVec; ++j) store(&out.v[j], load(&q.v[j]) * load(&s.v[j]) * load(&t.v[j]));
      store_pack(static_cast<in_t*>(a.out) + o, out, count, vector);
      continue;
    }
    const Pack<in_t> d = load_pack(at_view<in_t>(a.grad, n, h, w) + c, count, vector);
    Pack<in_t> dq, ds, dt;
    for (int j = 0; j < kVec; ++j) {
      const auto gq = load(&d.v[j]) * load(&q.v[j]);
      store(&dq.v[j], load(&d.v[j]) * load(&s.v[j]) * load(&t.v[j]));
      store(&ds.v[j], gq * load(&t.v[j]));
      store(&dt.v[j], gq * load(&s.v[j]));
    }
    store_pack(static_cast<in_t*>(a.dq) + o, dq, count, vector);
    store_pack(static_cast<in_t*>(a.dm_s) + o, ds, count, vector);
    store_pack(static_cast<in_t*>(a.dm_t) + o, dt, count, vector);
  }
}

template <typename acc_t>
__global__ void sum_row_groups_kernel(const acc_t* parts, int64_t groups, int64_t rows, int64_t width, acc_t* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < groups * width; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = i / width, col = i % width;
    const acc_t* part = parts + g * rows * width + col;
    acc_t total = 0;
    for (int64_t r = 0; r < rows; ++r) total += part[r * width];
    out[i] = total;
  }
}

// ---- launch -------------------------------------------------------------------------------------
template <template <typename> class Launch, typename Args>
int by_dtype(const Args& a, cudaStream_t stream) {
  switch (a.dtype) {
    case Dtype::f32: Launch<float>::run(a, stream); break;
    case Dtype::f64: Launch<double>::run(a, stream); break;
    case Dtype::bf16: Launch<bf16>::run(a, stream); break;
    case Dtype::f16: Launch<f16>::run(a, stream); break;
  }
  return static_cast<int>(cudaGetLastError());
}

// Dynamic shared memory above the default 48 KiB must be asked for per kernel; a request beyond
// what the device allows fails the launch with cudaErrorInvalidValue (reported by the caller).
template <typename Kernel>
void allow_shared(Kernel kernel, int64_t bytes) {
  if (bytes > (48 << 10)) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

template <typename in_t>
struct SpatialLevelLaunch {
  static void run(const SpatialLevel& a, cudaStream_t stream) {
    using acc_t = typename Acc<in_t>::type;
    const int64_t bytes = spatial_shared_bytes<acc_t>(a.k, a.W);
    allow_shared(spatial_level_kernel<in_t>, bytes);
    const dim3 grid(unsigned(a.N * a.H), unsigned(ceil_div(a.C, kWarp))), block(kWarp, kPixelWarps);
    spatial_level_kernel<in_t><<<grid, block, bytes, stream>>>(a);
  }
};

template <typename in_t>
struct SpatialFinishLaunch {
  static void run(const SpatialFinish& a, cudaStream_t stream) {
    spatial_finish_kernel<in_t><<<grid_for(a.N * a.H * a.W * a.C, kElementThreads), kElementThreads, 0, stream>>>(a);
  }
};

template <typename in_t>
struct SpatialBackwardGlobalLaunch {
  static void run(const SpatialBackward& a, cudaStream_t stream) {
    using acc_t = typename Acc<in_t>::type;
    const int64_t bytes = kPixelWarps * a.C * int64_t(sizeof(acc_t));
    allow_shared(spatial_backward_global_kernel<in_t>, bytes);
    spatial_backward_global_kernel<in_t><<<unsigned(a.N * a.H), dim3(kWarp, kPixelWarps), bytes, stream>>>(a);
  }
};

template <typename in_t>
struct SpatialBackwardLevelLaunch {
  static void run(const SpatialBackward& a, cudaStream_t stream) {
    using acc_t = typename Acc<in_t>::type;
    const int64_t bytes = spatial_shared_bytes<acc_t>(a.level < a.num_levels ? a.k : 1, a.W);
    allow_shared(spatial_backward_level_kernel<in_t>, bytes);
    const dim3 grid(unsigned(a.N * a.H), unsigned(ceil_div(a.C, kWarp))), block(kWarp, kPixelWarps);
    spatial_backward_level_kernel<in_t><<<grid, block, bytes, stream>>>(a);
    if (a.level >= 1) {
      spatial_gate_grad_kernel<in_t><<<grid_for(a.N * a.H * a.W, kElementThreads), kElementThreads, 0, stream>>>(a);
    }
  }
};

template <typename in_t>
struct TemporalForwardLaunch {
  static void run(const TemporalForward& a, cudaStream_t stream) {
    temporal_forward_kernel<in_t><<<grid_for(a.B * a.H * a.W * a.C, kElementThreads), kElementThreads, 0, stream>>>(a);
  }
};

template <typename in_t>
struct TemporalBackwardTopLaunch {
  static void run(const TemporalBackward& a, cudaStream_t stream) {
    temporal_backward_top_kernel<in_t><<<unsigned(a.B * a.H * a.W), kPositionThreads, 0, stream>>>(a);
  }
};

template <typename in_t>
struct TemporalBackwardLevelLaunch {
  static void run(const TemporalBackward& a, cudaStream_t stream) {
    temporal_backward_level_kernel<in_t><<<unsigned(a.B * a.H * a.W), kPositionThreads, 0, stream>>>(a);
  }
};

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 128-bit accesses need every base 16-byte aligned and every stride (and C) a multiple of kVec.
template <typename in_t>
bool vector_ok(const Modulate& a, bool backward) {
  constexpr int64_t kVec = Pack<in_t>::kVec;
  const View views[4] = {a.q, a.m_s, a.m_t, a.grad};
  bool ok = a.C % kVec == 0;
  for (int i = 0; i < (backward ? 4 : 3); ++i) {
    ok = ok && aligned(views[i].data) && views[i].sn % kVec == 0 && views[i].sh % kVec == 0 && views[i].sw % kVec == 0;
  }
  if (backward) return ok && aligned(a.dq) && aligned(a.dm_s) && aligned(a.dm_t);
  return ok && aligned(a.out);
}

template <bool kBackward>
struct ModulateLaunch {
  template <typename in_t>
  struct For {
    static void run(const Modulate& a, cudaStream_t stream) {
      const int64_t items = a.N * a.H * a.W * ceil_div(a.C, Pack<in_t>::kVec);
      modulate_kernel<in_t><<<grid_for(items, kElementThreads), kElementThreads, 0, stream>>>(a, vector_ok<in_t>(a, kBackward),
                                                                                           kBackward);
    }
  };
};

}  // namespace

int spatial_level(const SpatialLevel& a, void* s) { return by_dtype<SpatialLevelLaunch>(a, cudaStream_t(s)); }
int spatial_finish(const SpatialFinish& a, void* s) { return by_dtype<SpatialFinishLaunch>(a, cudaStream_t(s)); }
int spatial_backward_global(const SpatialBackward& a, void* s) {
  return by_dtype<SpatialBackwardGlobalLaunch>(a, cudaStream_t(s));
}
int spatial_backward_level(const SpatialBackward& a, void* s) {
  return by_dtype<SpatialBackwardLevelLaunch>(a, cudaStream_t(s));
}
int temporal_forward(const TemporalForward& a, void* s) { return by_dtype<TemporalForwardLaunch>(a, cudaStream_t(s)); }
int temporal_backward_top(const TemporalBackward& a, void* s) {
  return by_dtype<TemporalBackwardTopLaunch>(a, cudaStream_t(s));
}
int temporal_backward_level(const TemporalBackward& a, void* s) {
  return by_dtype<TemporalBackwardLevelLaunch>(a, cudaStream_t(s));
}
int modulate_forward(const Modulate& a, void* s) { return by_dtype<ModulateLaunch<false>::For>(a, cudaStream_t(s)); }
int modulate_backward(const Modulate& a, void* s) { return by_dtype<ModulateLaunch<true>::For>(a, cudaStream_t(s)); }

int sum_row_groups(bool is_double, const void* parts, int64_t groups, int64_t rows, int64_t width, void* out, void* s) {
  const unsigned grid = grid_for(groups * width, kElementThreads);
  if (is_double) {
    sum_row_groups_kernel<<<grid, kElementThreads, 0, cudaStream_t(s)>>>(static_cast<const double*>(parts), groups, rows,
                                                                         width, static_cast<double*>(out));
  } else {
    sum_row_groups_kernel<<<grid, kElementThreads, 0, cudaStream_t(s)>>>(static_cast<const float*>(parts), groups, rows,
                                                                         width, static_cast<float*>(out));
  }
  return static_cast<int>(cudaGetLastError());
}

const char* error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

}  // namespace cuda
}  // namespace focal
}  // namespace dvfl
