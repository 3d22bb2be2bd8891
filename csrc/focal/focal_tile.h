// Per-block maths of the focal modulation, shared by the CPU and CUDA kernels: the depthwise tap
// loop, the temporal tap sum, the gated GELU accumulation and its gradient, the global term's gradient.
//
// Included by: focal_cpu_kernels.h (the CPU kernels, built once per instruction set; the CPU tests
// against float64 run this code) and focal_cuda.cu (the CUDA kernels).
//
// Every function works on one block of `width` channels held in arrays the caller owns. `Width` is
// either a compile-time FixedWidth (the CPU's full blocks of 16 lanes, whose accumulators then stay
// in one register; a CUDA thread's one channel) or an int64_t (the CPU's last, partial block). Loads and stores take any storage type of focal_math.h and compute in acc_t.
#pragma once

#include <cstdint>

#include "focal_math.h"

#if defined(__CUDACC__)
#define DVFL_SIMD
#else
#define DVFL_SIMD _Pragma("omp simd")
#endif

namespace dvfl {
namespace focal {

template <int64_t N>
struct FixedWidth {
  DVFL_HD_MEMBER constexpr operator int64_t() const { return N; }
};

// out[i] = sum over taps (dy, dx) in [dy0, dy1) x [dx0, dx1) of weight[(dy * k + dx) * wstride + i]
// * src[(dy - pad) * sh + (dx - pad) * sw + i]: the k x k depthwise convolution at the pixel `src`
// points to (channel c0), taps outside the image left out by the caller's bounds.
template <int kMaxWidth, typename src_t, typename acc_t, typename Width>
DVFL_HD void depthwise_window(const src_t* src, int64_t sh, int64_t sw, int64_t pad, int64_t dy0, int64_t dy1,
                              int64_t dx0, int64_t dx1, const acc_t* weight, int64_t k, int64_t wstride, Width width,
                              acc_t* out) {
  acc_t a[kMaxWidth];
  for (int64_t i = 0; i < width; ++i) a[i] = 0;
  for (int64_t dy = dy0; dy < dy1; ++dy) {
    for (int64_t dx = dx0; dx < dx1; ++dx) {
      const src_t* s = src + (dy - pad) * sh + (dx - pad) * sw;
      const acc_t* wv = weight + (dy * k + dx) * wstride;
      DVFL_SIMD
      for (int64_t i = 0; i < width; ++i) a[i] += wv[i] * load(s + i);
    }
  }
  for (int64_t i = 0; i < width; ++i) out[i] = a[i];
}

// out[i] = sum over j < taps of first[j * step + i]: the temporal convolution's pre-activation from
// the taps' GEMM outputs (each tap's row for this frame lies `step` elements after the previous one).
template <int kMaxWidth, typename in_t, typename acc_t, typename Width>
DVFL_HD void sum_taps(const in_t* first, int64_t step, int64_t taps, Width width, acc_t* out) {
  acc_t a[kMaxWidth];
  for (int64_t i = 0; i < width; ++i) a[i] = 0;
  for (int64_t j = 0; j < taps; ++j) {
    const in_t* s = first + j * step;
    DVFL_SIMD
    for (int64_t i = 0; i < width; ++i) a[i] += load(s + i);
  }
  for (int64_t i = 0; i < width; ++i) out[i] = a[i];
}

// One focal level's forward: z = GELU(pre), value = acc_in + gate * z (acc_in null on the first level).
template <typename acc_t, typename Width>
DVFL_HD void gelu_gate_accumulate(const acc_t* pre, acc_t gate, const acc_t* acc_in, Width width, acc_t* z,
                                  acc_t* value) {
  DVFL_SIMD
  for (int64_t i = 0; i < width; ++i) z[i] = gelu(pre[i]);
  if (acc_in == nullptr) {
    for (int64_t i = 0; i < width; ++i) value[i] = gate * z[i];
  } else {
    for (int64_t i = 0; i < width; ++i) value[i] = acc_in[i] + gate * z[i];
  }
}

// GELU and GELU' of one block, from one erf / exp each.
template <typename acc_t, typename Width>
DVFL_HD void gelu_and_grad_block(const acc_t* pre, Width width, acc_t* value, acc_t* grad) {
  DVFL_SIMD
  for (int64_t i = 0; i < width; ++i) gelu_and_grad(pre[i], value[i], grad[i]);
}

// One focal level's backward, given z = GELU(pre) and grad = GELU'(pre), the level's output gradient
// dA (op's dtype), the gradient dz reaching z from above (the next level's conv, or the global term's
// mean) and gate = scale * g: dpre = (dz + gate * dA) * grad. Returns this block's share of
// d loss / d g, sum_i scale * dA_i * z_i, summed in lane order.
template <typename in_t, typename acc_t, typename Width>
DVFL_HD acc_t gate_backward(const acc_t* z, const acc_t* grad, const acc_t* dz, const in_t* dA, acc_t gate,
                            acc_t scale, Width width, acc_t* dpre) {
  acc_t dgate = 0;
  for (int64_t i = 0; i < width; ++i) {
    const acc_t d = load(dA + i);
    dgate += scale * d * z[i];
    dpre[i] = (dz[i] + gate * d) * grad[i];
  }
  return dgate;
}

// The global level's gradient over one block: with d_i = scale * dA_i, lanes[i] += d_i * m_i (the
// gate's gradient, summed by the caller in a fixed order) and part[i] += d_i * gate (the mean's).
template <typename in_t, typename acc_t, typename Width>
DVFL_HD void global_term_grad(const in_t* dA, const acc_t* m, acc_t scale, acc_t gate, Width width, acc_t* part,
                              acc_t* lanes) {
  DVFL_SIMD
  for (int64_t i = 0; i < width; ++i) {
    const acc_t d = scale * load(dA + i);
    part[i] += d * gate;
    lanes[i] += d * m[i];
  }
}

}  // namespace focal
}  // namespace dvfl
