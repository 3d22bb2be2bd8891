// CPU kernels of the focal modulation (argument blocks: focal_cpu_args.h). Included once per
// instruction set by focal_cpu_avx512.cpp and focal_cpu_base.cpp, each inside its own namespace
// (DVFL_CPU_CAPABILITY) and after its target pragma, so nothing here depends on ATen.
//
// Loops over channels run in blocks of kLanes accumulators (one AVX-512 register of float) with
// `omp simd`; the per-pixel tap loops sit outside them, so a block's accumulators stay in
// registers. Element maths (GELU, GELU', bf16 rounding) comes from focal_math.h.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "focal_cpu_args.h"
#include "focal_math.h"

namespace dvfl {
namespace focal {
namespace DVFL_CPU_CAPABILITY {
namespace {

constexpr int64_t kLanes = 16;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

inline float load(const float* p) { return *p; }
inline double load(const double* p) { return *p; }
inline float load(const bf16* p) { return bf16_to_float(p->bits); }
inline void store(float* p, float v) { *p = v; }
inline void store(double* p, double v) { *p = v; }
inline void store(bf16* p, float v) { p->bits = float_to_bf16(v); }

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

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
  DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) {
#pragma omp simd
    for (int64_t i = 0; i < width; ++i) {
      const acc_t d = scale * load(dA + c0 + i);
      part[c0 + i] += d * gate;
      lanes[i] += d * m[c0 + i];
    }
  }
  acc_t sum = 0;
  for (int64_t i = 0; i < kLanes; ++i) sum += lanes[i];
  return sum;
}

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
// out[c] = sum over the k x k taps inside the image of w[tap][c] * src[(h, w) + tap offset][c].
// Width: kLanes as a compile-time constant for full blocks (the accumulators then live in registers),
// or the remainder at run time.
template <typename src_t, typename acc_t, typename Width>
inline void dwconv_block(const src_t* src, int64_t sh, int64_t sw, int64_t H, int64_t W, int64_t h, int64_t w,
                         int64_t k, const acc_t* weight, int64_t C, int64_t c0, Width width, acc_t* out) {
  const int64_t pad = k / 2;
  const int64_t dy0 = imax(0, pad - h), dy1 = imin(k, H + pad - h);
  const int64_t dx0 = imax(0, pad - w), dx1 = imin(k, W + pad - w);
  acc_t a[kLanes];
  for (int64_t i = 0; i < width; ++i) a[i] = 0;
  for (int64_t dy = dy0; dy < dy1; ++dy) {
    for (int64_t dx = dx0; dx < dx1; ++dx) {
      const src_t* s = src + (h + dy - pad) * sh + (w + dx - pad) * sw + c0;
      const acc_t* wv = weight + (dy * k + dx) * C + c0;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) a[i] += wv[i] * load(s + i);
    }
  }
  for (int64_t i = 0; i < width; ++i) out[i] = a[i];
}

template <typename in_t>
void spatial_level_impl(const SpatialLevel& a, int64_t row_begin, int64_t row_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t H = a.H, W = a.W, C = a.C;
  const bool last = a.level == a.num_levels - 1;
  const acc_t scale = acc_t(a.scale);
  const acc_t* weight = static_cast<const acc_t*>(a.weight);
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
        acc_t pre[kLanes];
        const auto conv = [&](auto fixed_or_runtime_width) {
          if (a.level == 0) {
            dwconv_block(at_view<in_t>(a.z, n, 0, 0), a.z.sh, a.z.sw, H, W, h, w, a.k, weight, C, c0,
                         fixed_or_runtime_width, pre);
          } else {
            const acc_t* src = static_cast<const acc_t*>(a.src) + n * H * W * C;
            dwconv_block(src, W * C, C, H, W, h, w, a.k, weight, C, c0, fixed_or_runtime_width, pre);
          }
        };
        if (width == kLanes) {
          conv(std::integral_constant<int64_t, kLanes>{});
        } else {
          conv(width);
        }
        const int64_t o = w * C + c0;
        acc_t z[kLanes];
        gelu_block(pre, width, z);
        if (a.level == 0) {
          for (int64_t i = 0; i < width; ++i) acc[o + i] = gate * z[i];
        } else {
          for (int64_t i = 0; i < width; ++i) acc[o + i] += gate * z[i];
        }
        if (z_out) std::memcpy(z_out + o, z, width * sizeof(acc_t));
        if (pre_out) std::memcpy(pre_out + o, pre, width * sizeof(acc_t));
        if (last) {
          for (int64_t i = 0; i < width; ++i) sums[c0 + i] += z[i];
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
    acc_t* wpart = level < L ? static_cast<acc_t*>(a.weight_part) + row * k * k * C : nullptr;
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
              acc_t* wp = wpart + (dy * k + dx) * C + c0;
#pragma omp simd
              for (int64_t i = 0; i < width; ++i) {
                dz[i] += wv[i] * d[i];
                wp[i] += d[i] * z[i];
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

template <typename in_t>
void temporal_forward_impl(const TemporalForward& a, int64_t pos_begin, int64_t pos_end) {
  using acc_t = typename Acc<in_t>::type;
  const int64_t T = a.T, HW = a.H * a.W, C = a.C, k = a.k, pad = k / 2, L = a.num_levels;
  const bool last = a.level == L - 1;
  const acc_t scale = acc_t(a.scale);
  const in_t* y = static_cast<const in_t*>(a.y);
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
        DVFL_FOR_CHANNEL_BLOCKS(C, c0, width) {
          acc_t pre[kLanes];
          for (int64_t i = 0; i < width; ++i) pre[i] = 0;
          for (int64_t j = j0; j < j1; ++j) {
            const in_t* src = y + (row + (j - pad) * HW) * (k * C) + j * C + c0;
#pragma omp simd
            for (int64_t i = 0; i < width; ++i) pre[i] += load(src + i);
          }
          acc_t z[kLanes];
          gelu_block(pre, width, z);
          acc_t* value = last ? result.data() + (t * chunk + q) * C + c0 : acc + c0;
          if (a.level == 0) {
            for (int64_t i = 0; i < width; ++i) value[i] = gate * z[i];
          } else {
            for (int64_t i = 0; i < width; ++i) value[i] = acc[c0 + i] + gate * z[i];
          }
          if (last) {
            for (int64_t i = 0; i < width; ++i) zsum[q * C + c0 + i] += z[i];
          } else {
            in_t* z_out = static_cast<in_t*>(a.z_out) + row * C + c0;
            for (int64_t i = 0; i < width; ++i) store(z_out + i, z[i]);
          }
          if (a.pre_out) std::memcpy(static_cast<acc_t*>(a.pre_out) + row * C + c0, pre, width * sizeof(acc_t));
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
          const in_t* src = y + (row - (j - pad) * HW) * (k * C) + j * C + c0;
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

template <template <typename> class Fn, typename Args>
void by_dtype(const Args& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case Dtype::f32: Fn<float>::run(a, begin, end); break;
    case Dtype::f64: Fn<double>::run(a, begin, end); break;
    case Dtype::bf16: Fn<bf16>::run(a, begin, end); break;
  }
}

#define DVFL_KERNEL_FUNCTOR(NAME, ARGS) \
  template <typename T>                 \
  struct NAME##_fn {                    \
    static void run(const ARGS& a, int64_t b, int64_t e) { NAME##_impl<T>(a, b, e); } \
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
