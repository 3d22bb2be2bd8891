// CPU kernels of the focal modulation (argument blocks: focal_args.h). Included once per
// instruction set by focal_cpu_avx512.cpp, focal_cpu_avx2.cpp and focal_cpu_base.cpp, each inside its own namespace
// (DVFL_CPU_CAPABILITY) and after its target pragma, so nothing here depends on ATen.
//
// Loops over channels run in blocks of kLanes accumulators (one AVX-512 register of float) with
// `omp simd`; the per-pixel tap loops sit outside them, so a block's accumulators stay in
// registers. The per-block maths (tap loops, gated GELU and its gradient, the global term's gradient)
// is focal_tile.h's, which the CUDA kernels run too; element maths (GELU, bf16) is focal_math.h's.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "focal_args.h"
#include "focal_tile.h"

namespace dvfl {
namespace focal {
namespace DVFL_CPU_CAPABILITY {
namespace {

constexpr int64_t kLanes = 16;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename T>
const T* at_view(const View& v, int64_t n, int64_t h, int64_t w) {
  return static_cast<const T*>(v.data) + n * v.sn + h * v.sh + w * v.sw;
}

// Channel blocks of at most kLanes. (A generic lambda per block would be simpler, but GCC does not
// apply the file's target pragma to lambda bodies: they would not vectorise.)
#define DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) \
  for (int64_t c0 = 0, width = imin(kLanes, C); c0 < C; c0 += kLanes, width = imin(kLanes, C - c0))

// The global level's gate gradient sum_c d_c m_c, d_c = scale * dA_c, and part_c += d_c * gate. The sum
// is kept in kLanes partial sums (lane = c mod kLanes) added in a fixed order, so it has the same bits
// on every call: an `omp simd reduction` may peel an alignment prologue and regroup the sum by where
// the tensors happen to be allocated (which broke bit-exact resume).
template <typename in_t, typename acc_t>
inline acc_t global_gate_grad(const in_t* dA, const acc_t* m, acc_t scale, acc_t gate, int64_t C, acc_t* part) {
  acc_t lanes[kLanes] = {};
  DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) global_term_grad(dA + c0, m + c0, scale, gate, width, part + c0, lanes);
  acc_t sum = 0;
  for (int64_t i = 0; i < kLanes; ++i) sum += lanes[i];
  return sum;
}

// Full blocks with a compile-time width (their accumulators stay in registers), the rest at run time.
using FullBlock = FixedWidth<kLanes>;

// GELU (and GELU') of up to kLanes values: loops with nothing else in them, so they vectorise.
template <typename acc_t>
inline void gelu_block(const acc_t* x, int64_t width, acc_t* out) {
#pragma omp simd
  for (int64_t i = 0; i < width; ++i) out[i] = gelu(x[i]);
}

template <typename acc_t>
inline void gelu_grad_block(const acc_t* x, int64_t width, acc_t* grad) {
#pragma omp simd
  for (int64_t i = 0; i < width; ++i) {
    acc_t value;
    gelu_and_grad(x[i], value, grad[i]);
  }
}

template <typename acc_t>
inline void gelu_and_grad_block(const acc_t* x, int64_t width, acc_t* value, acc_t* grad) {
#pragma omp simd
  for (int64_t i = 0; i < width; ++i) gelu_and_grad(x[i], value[i], grad[i]);
}

// ---- spatial context ----------------------------------------------------------------------------
// The k x k depthwise convolution of one channel block at pixel (h, w), taps inside the image only.
template <typename src_t, typename acc_t, typename Width>
inline void dwconv_block(const src_t* src, int64_t sh, int64_t sw, int64_t H, int64_t W, int64_t h, int64_t w,
                         int64_t k, const acc_t* weight, int64_t C, int64_t c0, Width width, acc_t* out) {
  const int64_t pad = k / 2;
  const int64_t dy0 = imax(0, pad - h), dy1 = imin(k, H + pad - h);
  const int64_t dx0 = imax(0, pad - w), dx1 = imin(k, W + pad - w);
  depthwise_window<kLanes>(src + h * sh + w * sw + c0, sh, sw, pad, dy0, dy1, dx0, dx1, weight + c0, k, C, width, out);
}

// The store epilogue of one channel block of a level (spatial or temporal): z for the next level in
// its storage type, the pre-activation for the backward, z summed for the global mean; each only
// where the caller asked for it (a null pointer: not needed).
template <typename z_t, typename acc_t, typename Width>
inline void store_level_outputs(const acc_t* z, const acc_t* pre, Width width, z_t* z_out, acc_t* pre_out,
                                acc_t* sums) {
  if (z_out) {
    for (int64_t i = 0; i < width; ++i) store(z_out + i, z[i]);
  }
  if (pre_out) {
    for (int64_t i = 0; i < width; ++i) pre_out[i] = pre[i];
  }
  if (sums) {
    for (int64_t i = 0; i < width; ++i) sums[i] += z[i];
  }
}

// One channel block of a spatial level at pixel (n, h, w): pre-activation, GELU, gated accumulation
// into acc (level 0 starts it), and what the next level, the backward and the global mean need.
template <typename in_t, typename acc_t, typename Width>
inline void spatial_level_block(const SpatialLevel& a, int64_t n, int64_t h, int64_t w, int64_t c0, Width width,
                                acc_t gate, acc_t* acc, acc_t* z_out, acc_t* pre_out, acc_t* sums) {
  const int64_t H = a.H, W = a.W, C = a.C;
  const acc_t* weight = static_cast<const acc_t*>(a.weight);
  acc_t pre[kLanes], z[kLanes];
  if (a.level == 0) {
    dwconv_block(at_view<in_t>(a.z, n, 0, 0), a.z.sh, a.z.sw, H, W, h, w, a.k, weight, C, c0, width, pre);
  } else {
    const acc_t* src = static_cast<const acc_t*>(a.src) + n * H * W * C;
    dwconv_block(src, W * C, C, H, W, h, w, a.k, weight, C, c0, width, pre);
  }
  gelu_gate_accumulate(pre, gate, a.level == 0 ? nullptr : acc, width, z, acc);
  store_level_outputs(z, pre, width, z_out, pre_out, sums);
}

template <typename in_t>
void spatial_level_impl(const SpatialLevel& a, int64_t row_begin, int64_t row_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t H = a.H, W = a.W, C = a.C;
  const bool last = a.level == a.num_levels - 1;
  const acc_t scale = acc_t(a.scale);
  std::vector<acc_t> sums(last ? C : 0);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / H, h = row % H;
    const int64_t out_row = row * W * C;
    acc_t* acc = static_cast<acc_t*>(a.acc) + out_row;
    acc_t* z_out = a.z_out ? static_cast<acc_t*>(a.z_out) + out_row : nullptr;
    acc_t* pre_out = a.pre_out ? static_cast<acc_t*>(a.pre_out) + out_row : nullptr;
    if (last) std::fill(sums.begin(), sums.end(), acc_t(0));
    for (int64_t w = 0; w < W; ++w) {
      const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + a.level);
      DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) {
        const int64_t o = w * C + c0;
        acc_t* const outs[3] = {z_out ? z_out + o : nullptr, pre_out ? pre_out + o : nullptr,
                                last ? sums.data() + c0 : nullptr};
        if (width == kLanes) {
          spatial_level_block<in_t>(a, n, h, w, c0, FullBlock{}, gate, acc + o, outs[0], outs[1], outs[2]);
        } else {
          spatial_level_block<in_t>(a, n, h, w, c0, width, gate, acc + o, outs[0], outs[1], outs[2]);
        }
      }
    }
    if (last) std::memcpy(static_cast<acc_t*>(a.row_sums) + row * C, sums.data(), C * sizeof(acc_t));
  }
}

template <typename in_t>
void spatial_finish_impl(const SpatialFinish& a, int64_t row_begin, int64_t row_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t H = a.H, W = a.W, C = a.C;
  const acc_t scale = acc_t(a.scale);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / H, h = row % H;
    const acc_t* acc = static_cast<const acc_t*>(a.acc) + row * W * C;
    const acc_t* gm = static_cast<const acc_t*>(a.mean_act) + n * C;
    in_t* out = static_cast<in_t*>(a.out) + row * W * C;
    for (int64_t w = 0; w < W; ++w) {
      const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + a.num_levels);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) store(out + w * C + c, acc[w * C + c] + gate * gm[c]);
    }
  }
}

template <typename in_t>
void spatial_backward_global_impl(const SpatialBackward& a, int64_t row_begin, int64_t row_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t H = a.H, W = a.W, C = a.C, L = a.num_levels;
  const acc_t scale = acc_t(a.scale);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / H, h = row % H;
    const acc_t* gm = static_cast<const acc_t*>(a.mean_act) + n * C;
    acc_t* part = static_cast<acc_t*>(a.row_part) + row * C;
    in_t* dg = static_cast<in_t*>(a.dg) + row * W * (L + 1);
    for (int64_t c = 0; c < C; ++c) part[c] = 0;
    for (int64_t w = 0; w < W; ++w) {
      const in_t* dA = at_view<in_t>(a.grad, n, h, w);
      const acc_t gate = load(at_view<in_t>(a.g, n, h, w) + L);
      store(dg + w * (L + 1) + L, global_gate_grad(dA, gm, scale, gate, C, part));
    }
  }
}

template <typename in_t>
void spatial_backward_level_impl(const SpatialBackward& a, int64_t row_begin, int64_t row_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t H = a.H, W = a.W, C = a.C, L = a.num_levels, level = a.level, k = a.k;
  const int64_t pad = k / 2;
  const acc_t scale = acc_t(a.scale);
  const acc_t* weight = static_cast<const acc_t*>(a.weight);
  const int64_t plane = H * W * C;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / H, h = row % H;
    const acc_t* pre = level >= 1 ? static_cast<const acc_t*>(a.pre) + (level - 1) * a.N * plane + row * W * C : nullptr;
    const acc_t* dpre_next = level < L ? static_cast<const acc_t*>(a.dpre_next) + n * plane : nullptr;
    acc_t* wpart = level < L && a.weight_part ? static_cast<acc_t*>(a.weight_part) + row * k * k * C : nullptr;
    if (wpart) std::memset(wpart, 0, k * k * C * sizeof(acc_t));
    const int64_t dy0 = imax(0, h + pad - H + 1), dy1 = imin(k, h + pad + 1);
    for (int64_t w = 0; w < W; ++w) {
      const int64_t dx0 = imax(0, w + pad - W + 1), dx1 = imin(k, w + pad + 1);
      const in_t* dA = at_view<in_t>(a.grad, n, h, w);
      acc_t gate = 0;
      if (level >= 1) gate = scale * load(at_view<in_t>(a.g, n, h, w) + (level - 1));
      acc_t dgate = 0;
      DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) {
        acc_t z[kLanes], dz[kLanes];
        if (level >= 1) {
          gelu_block(pre + w * C + c0, width, z);
        } else {
          const in_t* zin = at_view<in_t>(a.z, n, h, w) + c0;
          for (int64_t i = 0; i < width; ++i) z[i] = load(zin + i);
        }
        for (int64_t i = 0; i < width; ++i) dz[i] = 0;
        if (level < L) {  // transposed conv of dpre_{level+1} and this pixel's weight-gradient terms
          for (int64_t dy = dy0; dy < dy1; ++dy) {
            for (int64_t dx = dx0; dx < dx1; ++dx) {
              const acc_t* d = dpre_next + ((h - dy + pad) * W + (w - dx + pad)) * C + c0;
              const acc_t* wv = weight + (dy * k + dx) * C + c0;
              if (wpart) {
                acc_t* wp = wpart + (dy * k + dx) * C + c0;
#pragma omp simd
                for (int64_t i = 0; i < width; ++i) {
                  dz[i] += wv[i] * d[i];
                  wp[i] += d[i] * z[i];
                }
              } else {  // frozen weights: no weight-gradient terms
#pragma omp simd
                for (int64_t i = 0; i < width; ++i) dz[i] += wv[i] * d[i];
              }
            }
          }
        } else {
          const acc_t* dmean = static_cast<const acc_t*>(a.dmean) + n * C + c0;
          for (int64_t i = 0; i < width; ++i) dz[i] = dmean[i];
        }
        if (level == 0) {
          in_t* out = static_cast<in_t*>(a.dz_out) + (row * W + w) * C + c0;
          for (int64_t i = 0; i < width; ++i) store(out + i, dz[i]);
        } else {
          acc_t* dpre = static_cast<acc_t*>(a.dpre_out) + (row * W + w) * C + c0;
          acc_t grad[kLanes];
          gelu_grad_block(pre + w * C + c0, width, grad);
          for (int64_t i = 0; i < width; ++i) {
            const acc_t d = load(dA + c0 + i);
            dgate += scale * d * z[i];
            dpre[i] = (dz[i] + gate * d) * grad[i];
          }
        }
      }
      if (level >= 1) store(static_cast<in_t*>(a.dg) + (row * W + w) * (L + 1) + (level - 1), dgate);
    }
  }
}

// ---- temporal context ---------------------------------------------------------------------------
// Positions of one clip handled together: for each frame t, a chunk's rows are adjacent in memory,
// so the k shifted reads of y stream through T*k short runs instead of T*k scattered rows.
inline int64_t chunk_positions(int64_t C) { return imax(1, 4096 / C); }

// One channel block of a temporal level at one row: the taps' sum, GELU, gated accumulation (value =
// acc_in + gate * z), and z for the next level, pre for the backward, z summed for the global mean.
template <typename in_t, typename acc_t, typename Width>
inline void temporal_forward_block(const in_t* taps, int64_t step, int64_t num_taps, acc_t gate, const acc_t* acc_in,
                                   Width width, acc_t* value, in_t* z_out, acc_t* pre_out, acc_t* sums) {
  acc_t pre[kLanes], z[kLanes];
  sum_taps<kLanes>(taps, step, num_taps, width, pre);
  gelu_gate_accumulate(pre, gate, acc_in, width, z, value);
  store_level_outputs(z, pre, width, z_out, pre_out, sums);
}

template <typename in_t>
void temporal_forward_impl(const TemporalForward& a, int64_t pos_begin, int64_t pos_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t T = a.T, HW = a.H * a.W, C = a.C, k = a.k, pad = k / 2, L = a.num_levels;
  const bool last = a.level == L - 1;
  const acc_t scale = acc_t(a.scale);
  const in_t* y = static_cast<const in_t*>(a.y);
  const int64_t step = HW * a.y_row + a.y_tap;  // tap j + 1: the next frame's row in the next tap
  const int64_t chunk = chunk_positions(C);
  std::vector<acc_t> result(last ? T * chunk * C : 0);  // last level: A before the global term
  std::vector<acc_t> zsum(last ? chunk * C : 0);
  for (int64_t first = pos_begin; first < pos_end;) {
    // a chunk never crosses a clip: its positions share b
    const int64_t b = first / HW, count = imin(imin(chunk, pos_end - first), (b + 1) * HW - first);
    if (last) std::fill(zsum.begin(), zsum.end(), acc_t(0));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t, j0 = imax(0, pad - t), j1 = imin(k, T + pad - t);
      for (int64_t q = 0; q < count; ++q) {
        const int64_t p = (first + q) % HW, row = n * HW + p;
        const acc_t gate = scale * load(at_view<in_t>(a.g, n, p / a.W, p % a.W) + a.level);
        acc_t* acc = a.acc ? static_cast<acc_t*>(a.acc) + row * C : nullptr;
        const in_t* taps = y + (row + (j0 - pad) * HW) * a.y_row + j0 * a.y_tap;
        acc_t* value = last ? result.data() + (t * chunk + q) * C : acc;
        in_t* z_out = last ? nullptr : static_cast<in_t*>(a.z_out) + row * C;
        acc_t* pre_out = a.pre_out ? static_cast<acc_t*>(a.pre_out) + row * C : nullptr;
        acc_t* sums = last ? zsum.data() + q * C : nullptr;
        DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) {
          const acc_t* acc_in = a.level == 0 ? nullptr : acc + c0;
          in_t* z_block = z_out ? z_out + c0 : nullptr;
          acc_t* pre_block = pre_out ? pre_out + c0 : nullptr;
          acc_t* sums_block = sums ? sums + c0 : nullptr;
          if (width == kLanes) {
            temporal_forward_block(taps + c0, step, j1 - j0, gate, acc_in, FullBlock{}, value + c0, z_block,
                                   pre_block, sums_block);
          } else {
            temporal_forward_block(taps + c0, step, j1 - j0, gate, acc_in, width, value + c0, z_block, pre_block,
                                   sums_block);
          }
        }
      }
    }
    if (last) {
      for (int64_t q = 0; q < count; ++q) {  // zsum becomes GELU(mean_t z_L), in place
        acc_t* mean_act = zsum.data() + q * C;
        for (int64_t c = 0; c < C; ++c) mean_act[c] /= acc_t(T);
        if (a.mean_out) std::memcpy(static_cast<acc_t*>(a.mean_out) + (first + q) * C, mean_act, C * sizeof(acc_t));
        DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) gelu_block(mean_act + c0, width, mean_act + c0);
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t n = b * T + t;
        for (int64_t q = 0; q < count; ++q) {
          const int64_t p = (first + q) % HW;
          const acc_t gate = scale * load(at_view<in_t>(a.g, n, p / a.W, p % a.W) + L);
          const acc_t* value = result.data() + (t * chunk + q) * C;
          const acc_t* mean_act = zsum.data() + q * C;
          in_t* out = static_cast<in_t*>(a.out) + (n * HW + p) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) store(out + c, value[c] + gate * mean_act[c]);
        }
      }
    }
    first += count;
  }
}

template <typename in_t>
void temporal_backward_top_impl(const TemporalBackward& a, int64_t pos_begin, int64_t pos_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t T = a.T, HW = a.H * a.W, C = a.C, L = a.num_levels, rows = a.B * T * HW;
  const acc_t scale = acc_t(a.scale);
  const acc_t* pre_last = static_cast<const acc_t*>(a.pre) + (L - 1) * rows * C;
  std::vector<acc_t> gm(C), dmean(C);
  for (int64_t pos = pos_begin; pos < pos_end; ++pos) {
    const int64_t b = pos / HW, p = pos % HW, h = p / a.W, w = p % a.W;
    const acc_t* mean = static_cast<const acc_t*>(a.mean) + pos * C;
    // dmean holds GELU'(mean) until scaled below
    DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) gelu_and_grad_block(mean + c0, width, gm.data() + c0, dmean.data() + c0);
    std::vector<acc_t> dsum(C, acc_t(0));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t;
      const in_t* dA = at_view<in_t>(a.grad, n, h, w);
      const acc_t gate = load(at_view<in_t>(a.g, n, h, w) + L);
      store(static_cast<in_t*>(a.dg) + (n * HW + p) * (L + 1) + L, global_gate_grad(dA, gm.data(), scale, gate, C, dsum.data()));
    }
    for (int64_t c = 0; c < C; ++c) dmean[c] *= dsum[c] / acc_t(T);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t, row = n * HW + p;
      const in_t* dA = at_view<in_t>(a.grad, n, h, w);
      const acc_t gate = scale * load(at_view<in_t>(a.g, n, h, w) + (L - 1));
      in_t* dp = static_cast<in_t*>(a.dp_out) + row * C;
      const acc_t* pre = pre_last + row * C;
      acc_t dgate = 0;
      DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) {
        acc_t value[kLanes], grad[kLanes];
        gelu_and_grad_block(pre + c0, width, value, grad);
        for (int64_t i = 0; i < width; ++i) {
          const acc_t d = load(dA + c0 + i);
          dgate += scale * d * value[i];
          store(dp + c0 + i, (gate * d + dmean[c0 + i]) * grad[i]);
        }
      }
      store(static_cast<in_t*>(a.dg) + row * (L + 1) + (L - 1), dgate);
    }
  }
}

template <typename in_t>
void temporal_backward_level_impl(const TemporalBackward& a, int64_t pos_begin, int64_t pos_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t T = a.T, HW = a.H * a.W, C = a.C, L = a.num_levels, k = a.k, pad = k / 2;
  const int64_t level = a.level, rows = a.B * T * HW;
  const acc_t scale = acc_t(a.scale);
  const in_t* y = static_cast<const in_t*>(a.y);
  const int64_t chunk = chunk_positions(C);
  for (int64_t first = pos_begin; first < pos_end;) {
    const int64_t b = first / HW, count = imin(imin(chunk, pos_end - first), (b + 1) * HW - first);
    for (int64_t t = 0; t < T; ++t) for (int64_t q = 0; q < count; ++q) {
      const int64_t p = (first + q) % HW, h = p / a.W, w = p % a.W;
      const int64_t n = b * T + t, row = n * HW + p;
      // output frame t receives tap j from frame t - (j - pad)
      const int64_t j0 = imax(0, t + pad - T + 1), j1 = imin(k, t + pad + 1);
      const in_t* dA = at_view<in_t>(a.grad, n, h, w);
      acc_t gate = 0;
      if (level >= 1) gate = scale * load(at_view<in_t>(a.g, n, h, w) + (level - 1));
      acc_t dgate = 0;
      DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) {
        acc_t dz[kLanes];
        for (int64_t i = 0; i < width; ++i) dz[i] = 0;
        for (int64_t j = j0; j < j1; ++j) {
          const in_t* src = y + (row - (j - pad) * HW) * a.y_row + j * a.y_tap + c0;
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) dz[i] += load(src + i);
        }
        if (level == 0) {
          in_t* out = static_cast<in_t*>(a.dz_out) + row * C + c0;
          for (int64_t i = 0; i < width; ++i) store(out + i, dz[i]);
          continue;
        }
        const acc_t* pre = static_cast<const acc_t*>(a.pre) + ((level - 1) * rows + row) * C + c0;
        in_t* z_out = static_cast<in_t*>(a.z_out) + row * C + c0;
        in_t* dp = static_cast<in_t*>(a.dp_out) + row * C + c0;
        acc_t value[kLanes], grad[kLanes];
        gelu_and_grad_block(pre, width, value, grad);
        for (int64_t i = 0; i < width; ++i) {
          const acc_t d = load(dA + c0 + i);
          dgate += scale * d * value[i];
          store(z_out + i, value[i]);
          store(dp + i, (dz[i] + gate * d) * grad[i]);
        }
      }
      if (level >= 1) store(static_cast<in_t*>(a.dg) + row * (L + 1) + (level - 1), dgate);
    }
    first += count;
  }
}

// ---- modulate -----------------------------------------------------------------------------------
template <typename in_t>
void modulate_forward_impl(const Modulate& a, int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / a.H, h = row % a.H;
    for (int64_t w = 0; w < a.W; ++w) {
      const in_t *q = at_view<in_t>(a.q, n, h, w), *s = at_view<in_t>(a.m_s, n, h, w), *t = at_view<in_t>(a.m_t, n, h, w);
      in_t* out = static_cast<in_t*>(a.out) + (row * a.W + w) * a.C;
#pragma omp simd
      for (int64_t c = 0; c < a.C; ++c) store(out + c, load(q + c) * load(s + c) * load(t + c));
    }
  }
}

template <typename in_t>
void modulate_backward_impl(const Modulate& a, int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / a.H, h = row % a.H;
    for (int64_t w = 0; w < a.W; ++w) {
      const in_t *q = at_view<in_t>(a.q, n, h, w), *s = at_view<in_t>(a.m_s, n, h, w), *t = at_view<in_t>(a.m_t, n, h, w);
      const in_t* d = at_view<in_t>(a.grad, n, h, w);
      const int64_t o = (row * a.W + w) * a.C;
      in_t *dq = static_cast<in_t*>(a.dq) + o, *ds = static_cast<in_t*>(a.dm_s) + o, *dt = static_cast<in_t*>(a.dm_t) + o;
#pragma omp simd
      for (int64_t c = 0; c < a.C; ++c) {
        const auto gq = load(d + c) * load(q + c);
        store(dq + c, load(d + c) * load(s + c) * load(t + c));
        store(ds + c, gq * load(t + c));
        store(dt + c, gq * load(s + c));
      }
    }
  }
}

template <typename acc_t>
void sum_rows_impl(const acc_t* parts, int64_t rows, int64_t width, acc_t* out, int64_t col_begin, int64_t col_end) {
  // Row order is fixed, whatever the thread count: the weight gradients are deterministic.
  for (int64_t c = col_begin; c < col_end; ++c) out[c] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* part = parts + r * width;
#pragma omp simd
    for (int64_t c = col_begin; c < col_end; ++c) out[c] += part[c];
  }
}

template <template <typename> class Fn, typename Args, typename... Range>
void by_dtype(const Args& a, Range... range) {
  switch (a.dtype) {
    case Dtype::f32: Fn<float>::run(a, range...); break;
    case Dtype::f64: Fn<double>::run(a, range...); break;
    case Dtype::bf16: Fn<bf16>::run(a, range...); break;
    case Dtype::f16: break;  // never sent here: the CPU launch code computes float16 in float32
  }
}

#define DVFL_KERNEL_FUNCTOR(NAME, ARGS) \
  template <typename T>                 \
  struct NAME##_fn {                    \
    template <typename... Range>                                                      \
    static void run(const ARGS& a, Range... range) { NAME##_impl<T>(a, range...); }   \
  };
DVFL_KERNEL_FUNCTOR(spatial_level, SpatialLevel)
DVFL_KERNEL_FUNCTOR(spatial_finish, SpatialFinish)
DVFL_KERNEL_FUNCTOR(spatial_backward_global, SpatialBackward)
DVFL_KERNEL_FUNCTOR(spatial_backward_level, SpatialBackward)
DVFL_KERNEL_FUNCTOR(temporal_forward, TemporalForward)
DVFL_KERNEL_FUNCTOR(temporal_backward_top, TemporalBackward)
DVFL_KERNEL_FUNCTOR(temporal_backward_level, TemporalBackward)
DVFL_KERNEL_FUNCTOR(modulate_forward, Modulate)
DVFL_KERNEL_FUNCTOR(modulate_backward, Modulate)
#undef DVFL_KERNEL_FUNCTOR

}  // namespace

void spatial_level(const SpatialLevel& a, int64_t b, int64_t e) { by_dtype<spatial_level_fn>(a, b, e); }
void spatial_finish(const SpatialFinish& a, int64_t b, int64_t e) { by_dtype<spatial_finish_fn>(a, b, e); }
void spatial_backward_global(const SpatialBackward& a, int64_t b, int64_t e) {
  by_dtype<spatial_backward_global_fn>(a, b, e);
}
void spatial_backward_level(const SpatialBackward& a, int64_t b, int64_t e) {
  by_dtype<spatial_backward_level_fn>(a, b, e);
}
void temporal_forward(const TemporalForward& a, int64_t b, int64_t e) { by_dtype<temporal_forward_fn>(a, b, e); }
void temporal_backward_top(const TemporalBackward& a, int64_t b, int64_t e) {
  by_dtype<temporal_backward_top_fn>(a, b, e);
}
void temporal_backward_level(const TemporalBackward& a, int64_t b, int64_t e) {
  by_dtype<temporal_backward_level_fn>(a, b, e);
}
void modulate_forward(const Modulate& a, int64_t b, int64_t e) { by_dtype<modulate_forward_fn>(a, b, e); }
void modulate_backward(const Modulate& a, int64_t b, int64_t e) { by_dtype<modulate_backward_fn>(a, b, e); }
void sum_rows(bool is_double, const void* parts, int64_t rows, int64_t width, void* out, int64_t cb, int64_t ce) {
  if (is_double) {
    sum_rows_impl(static_cast<const double*>(parts), rows, width, static_cast<double*>(out), cb, ce);
  } else {
    sum_rows_impl(static_cast<const float*>(parts), rows, width, static_cast<float*>(out), cb, ce);
  }
}

}  // namespace DVFL_CPU_CAPABILITY
}  // namespace focal
}  // namespace dvfl
