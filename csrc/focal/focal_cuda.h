// Entry points of the CUDA focal-modulation kernels (focal_cuda.cu), called by the launch code in
// focal.cpp with the same argument blocks as the CPU kernels (focal_args.h). Plain C++ types only,
// so focal_cuda.cu includes no torch headers and nvcc compiles it in seconds.
//
// Each function enqueues its kernels on `stream` (a cudaStream_t) over all of the call's work units
// and returns the cudaError_t of the launch as an int (0: queued). Nothing synchronises the host.
#pragma once

#include <cstdint>

#include "focal_args.h"

namespace dvfl {
namespace focal {
namespace cuda {

int spatial_level(const SpatialLevel& a, void* stream);
int spatial_finish(const SpatialFinish& a, void* stream);
int spatial_backward_global(const SpatialBackward& a, void* stream);
int spatial_backward_level(const SpatialBackward& a, void* stream);
int temporal_forward(const TemporalForward& a, void* stream);
int temporal_backward_top(const TemporalBackward& a, void* stream);
int temporal_backward_level(const TemporalBackward& a, void* stream);
int modulate_forward(const Modulate& a, void* stream);
int modulate_backward(const Modulate& a, void* stream);
// out[g][c] = sum over r < rows of parts[g * rows + r][c], r in order (deterministic), for
// groups x width columns; parts and out are float (or double when is_double).
int sum_row_groups(bool is_double, const void* parts, int64_t groups, int64_t rows, int64_t width, void* out,
                   void* stream);
const char* error_string(int error);

}  // namespace cuda
}  // namespace focal
}  // namespace dvfl
