// Baseline x86-64 build of the CPU focal kernels, for CPUs without AVX-512.
#define DVFL_CPU_CAPABILITY base
#include "focal_cpu_kernels.h"
