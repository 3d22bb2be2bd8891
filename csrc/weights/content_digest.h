#pragma once
#include <torch/extension.h>

namespace dvfl {
// A 64-bit digest of every byte of a CPU tensor's data (dvfl_kernels/_prepared.py compares it to see
// writes that bypass the version counter: `.data`, numpy, ctypes).
int64_t content_digest(const at::Tensor& t);
}  // namespace dvfl
