// AVX-512 build of the CPU focal kernels (chosen at run time where the CPU has AVX-512 F/BW/VL/DQ).
// The target pragma comes before every include, so every inline function here is built for it.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2,prefer-vector-width=512")
#define DVFL_CPU_CAPABILITY avx512
#include "focal_cpu_kernels.h"
