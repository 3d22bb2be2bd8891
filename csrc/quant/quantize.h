#pragma once
#include <torch/extension.h>

namespace dvfl {
// x (float32 or bfloat16, CPU, any strides) -> uint8 of x's shape, contiguous:
//   clamp(nearbyint(x * (1 / scale)) + zero_point, 0, 255), NaN -> 0.
// The activation side of an int8 GEMM (dvfl_kernels/cpu_int8.py); one read of x, one write of bytes.
at::Tensor quantize_u8(const at::Tensor& x, double scale, int64_t zero_point);
}  // namespace dvfl
