// Per-tensor activation quantization for the int8 GEMMs (dvfl_kernels/cpu_int8.py). ATen's own
// quantize_per_tensor makes a deprecated quint8 tensor, and its decomposed form (divide, round, add,
// clamp, cast as separate ops) took 10-50x longer than this single pass on the nano's stage-1 rows.
#include "quantize.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cmath>

#include <immintrin.h>

#include "../cpu_capability.h"

namespace dvfl {
namespace {

// One element: multiply by the reciprocal (as the reference does), round half to even, shift,
// saturate. Written with comparisons rather than std::min / max so that NaN lands on 0 instead of
// an undefined float -> integer conversion.
template <typename T>
inline __attribute__((always_inline)) void quantize_range(const T* x, uint8_t* out, int64_t n, float inv_scale,
                                                          float zero_point) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(static_cast<float>(x[i]) * inv_scale) + zero_point;
    v = v > 0.f ? v : 0.f;
    v = v < 255.f ? v : 255.f;
    out[i] = static_cast<uint8_t>(v);
  }
}

inline __attribute__((target("avx512f,avx512bw"))) __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __attribute__((target("avx512f,avx512bw"))) __m512 load16(const c10::BFloat16* x) {
  // bfloat16 is the high half of a float32: widen and shift into place
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// 16 elements a step: cvtps_epi32 rounds half to even (the default MXCSR mode), NaN and overflow give
// INT_MIN, which the max with 0 sends to 0 as the scalar code does; cvtusepi32 saturates above 255.
// Positive overflow (x * inv_scale >= 2^31) would also give INT_MIN, so values are clamped to +-2^30 first.
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void quantize_avx512(
    const T* x, uint8_t* out, int64_t n, float inv_scale, float zero_point) {
  const __m512 scale = _mm512_set1_ps(inv_scale);
  const __m512 limit = _mm512_set1_ps(1073741824.f);
  const __m512 neg_limit = _mm512_set1_ps(-1073741824.f);
  const __m512i zp = _mm512_set1_epi32(static_cast<int32_t>(zero_point));
  const __m512i zero = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_mul_ps(load16(x + i), scale);
    v = _mm512_max_ps(neg_limit, _mm512_min_ps(limit, v));  // NaN passes: min / max return the second operand
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), zp);
    q = _mm512_max_epi32(q, zero);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtusepi32_epi8(q));
  }
  quantize_range(x + i, out + i, n - i, inv_scale, zero_point);
}

template <typename T>
void quantize_base(const T* x, uint8_t* out, int64_t n, float inv_scale, float zero_point) {
  quantize_range(x, out, n, inv_scale, zero_point);
}

// Elements per task: a thread's start-up is noise against 64 KiB of float32 read.
constexpr int64_t kGrain = 1 << 14;

}  // namespace

at::Tensor quantize_u8(const at::Tensor& x, double scale, int64_t zero_point) {
  TORCH_CHECK(x.device().is_cpu(), "quantize_u8: x: expected a CPU tensor, got one on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "quantize_u8: x: expected float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0, "quantize_u8: scale: expected a finite value > 0, got ", scale);
  TORCH_CHECK(zero_point >= 0 && zero_point <= 255, "quantize_u8: zero_point: expected 0..255, got ", zero_point);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const int64_t n = input.numel();
  const float inv_scale = static_cast<float>(1.0 / scale);
  const float zp = static_cast<float>(zero_point);
  const bool avx512 = cpu_has_avx512();
  uint8_t* dst = out.data_ptr<uint8_t>();
  AT_DISPATCH_SWITCH(input.scalar_type(), "quantize_u8",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        const float* src = input.data_ptr<float>();
        at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
          (avx512 ? quantize_avx512<float> : quantize_base<float>)(src + begin, dst + begin, end - begin, inv_scale, zp);
        });
      })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        const c10::BFloat16* src = input.data_ptr<c10::BFloat16>();
        at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
          (avx512 ? quantize_avx512<c10::BFloat16> : quantize_base<c10::BFloat16>)(src + begin, dst + begin,
                                                                                  end - begin, inv_scale, zp);
        });
      }));
  return out;
}

TORCH_LIBRARY_IMPL(dvfl, CPU, m) { m.impl("quantize_u8", &quantize_u8); }

}  // namespace dvfl
