// AVX2 + FMA build of the row kernel (chosen at run time when the CPU has both). The target pragma
// comes before every include, so every inline function used here is compiled for the same target.
#pragma GCC target("avx2,fma")
#define DVFL_CPU_CAPABILITY avx2
#include "kd_loss_cpu_row.h"
