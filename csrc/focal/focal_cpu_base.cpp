// Baseline x86-64 build of the CPU focal kernels, for CPUs with neither AVX-512 nor AVX2 + FMA.
#define DVFL_CPU_CAPABILITY base
#include "focal_cpu_kernels.h"
