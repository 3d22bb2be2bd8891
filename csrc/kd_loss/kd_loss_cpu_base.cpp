// Baseline x86-64 (SSE2) build of the row kernel, for CPUs without AVX2.
#define DVFL_CPU_CAPABILITY base
#include "kd_loss_cpu_row.h"
