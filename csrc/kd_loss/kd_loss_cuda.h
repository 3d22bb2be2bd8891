// Launcher of the CUDA fused KL + CE kernel. Plain C++/CUDA types only: kd_loss_cuda.cu includes no
// torch headers, so nvcc compiles it in seconds (CI compiles it on machines without a GPU).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dvfl {

enum class LogitType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct KdCeLaunch {
  const void* student;  // (rows, classes), row stride stride_s, class stride 1
  const void* teacher;  // same type and shape, row stride stride_t
  const void* target;   // int64 labels (stride_y) or soft targets in the accumulation type (row stride stride_y)
  void* losses;         // (3, rows) accumulation type: total, kd, ce
  void* grad;           // (rows, classes) accumulation type, dense; unused unless compute_grad
  int64_t rows, classes, stride_s, stride_t, stride_y;
  bool soft, compute_grad;
  double alpha, temperature, label_smoothing;
  LogitType type;  // accumulation type: float64 for kFloat64, float32 otherwise
};

// Enqueues one kernel launch on `stream`; returns the launch error (cudaSuccess when queued).
cudaError_t launch_kd_ce_loss_rows(const KdCeLaunch& args, cudaStream_t stream);

}  // namespace dvfl
