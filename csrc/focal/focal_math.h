// Element maths of the focal modulation, shared by every C++ backend: GELU and its derivative in
// the accumulation type, and loads / stores of every storage type (float32, float64, bfloat16 and,
// on CUDA, float16) in the accumulation type.
//
// Included by: focal_tile.h, hence focal_cpu_kernels.h (the CPU kernels, built once per instruction
// set) and focal_cuda.cu (the CUDA kernels). DVFL_HD marks the functions host-and-device; on the host
// they are `static`, so each instruction-set build keeps its own copy (two external inline
// definitions built with different target flags would be one symbol, and the linker may keep the
// AVX-512 one for the baseline build).
//
// GELU is the exact (erf) one. For float on the host, erf is the branch-free polynomial of
// Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7) with a vectorisable exp, so `omp simd` loops over
// channels compile to SIMD code (libm's erff does not vectorise without -ffast-math); on the
// device, float uses erff. double always uses the C library (it serves the float64 tests).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define DVFL_HD __host__ __device__ __forceinline__
#define DVFL_HD_MEMBER __host__ __device__
#else
#define DVFL_HD static inline
#define DVFL_HD_MEMBER
#endif

namespace dvfl {
namespace focal {

DVFL_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);
#endif
}

DVFL_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// exp(x) for x in [-87, 0]: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its Taylor series to r^7
// (relative error < 2e-8 there), 2^n built in the exponent bits.
DVFL_HD float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * bits_to_float(static_cast<uint32_t>(bits));
}

// erf(x) and exp(-x^2) (the latter is what GELU's derivative needs as well).
DVFL_HD void erf_and_gaussian(float x, float& erf_x, float& gauss) {
#if defined(__CUDA_ARCH__)
  erf_x = erff(x);
  gauss = __expf(-x * x);
#else
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  gauss = exp_nonpositive(-ax * ax);
  const float e = 1.0f - poly * t * gauss;
  erf_x = x < 0.0f ? -e : e;
#endif
}

DVFL_HD void erf_and_gaussian(double x, double& erf_x, double& gauss) {
#if defined(__CUDA_ARCH__)
  erf_x = erf(x);
  gauss = exp(-x * x);
#else
  erf_x = std::erf(x);
  gauss = std::exp(-x * x);
#endif
}

template <typename acc_t>
DVFL_HD acc_t gelu(acc_t x) {
  acc_t e, g;
  erf_and_gaussian(x * acc_t(kInvSqrt2), e, g);
  return acc_t(0.5) * x * (acc_t(1) + e);
}

// GELU(x) and GELU'(x) = Phi(x) + x phi(x) from one erf / exp.
template <typename acc_t>
DVFL_HD void gelu_and_grad(acc_t x, acc_t& value, acc_t& grad) {
  acc_t e, g;
  erf_and_gaussian(x * acc_t(kInvSqrt2), e, g);
  const acc_t cdf = acc_t(0.5) * (acc_t(1) + e);
  value = x * cdf;
  grad = cdf + x * g * acc_t(kInvSqrt2Pi);
}

// bfloat16 and float16 as their 16 bits: the kernels take tensors' data as these.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

// bfloat16: widening is a shift; narrowing rounds to nearest even and keeps NaN a NaN.
DVFL_HD float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

DVFL_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
}

DVFL_HD float load(const float* p) { return *p; }
DVFL_HD double load(const double* p) { return *p; }
DVFL_HD float load(const bf16* p) { return bf16_to_float(p->bits); }
DVFL_HD void store(float* p, float v) { *p = v; }
DVFL_HD void store(double* p, double v) { *p = v; }
DVFL_HD void store(bf16* p, float v) { p->bits = float_to_bf16(v); }
#if defined(__CUDACC__)
DVFL_HD float load(const f16* p) { return __half2float(__ushort_as_half(p->bits)); }
DVFL_HD void store(f16* p, float v) { p->bits = __half_as_ushort(__float2half_rn(v)); }
#endif

// The accumulation type of a storage type: float, or double for double.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

}  // namespace focal
}  // namespace dvfl
