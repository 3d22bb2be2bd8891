// AVX2 + FMA build of the CPU focal kernels (chosen at run time where the CPU has both but not AVX-512:
// AMD EPYC Zen 2/3, Intel client cores). The target pragma comes before every include, so every inline
// function here is built for it; -ffp-contract=off (setup.py) keeps its rounding the baseline's.
#pragma GCC target("avx2,fma,bmi2")
#define DVFL_CPU_CAPABILITY avx2
#include "focal_cpu_kernels.h"
