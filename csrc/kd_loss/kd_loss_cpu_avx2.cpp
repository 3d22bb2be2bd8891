// AVX2 + FMA build of the row kernel (chosen at run time when the CPU has both). The target pragma
// comes before every include, so every inline function used here is compiled for the same target.
#pragma GCC target("avx2,fma")
#define DVFL_CPU_CAPABILITY avx2
#include "kd_loss_cpu_row.h"
#include "kd_loss_cpu_kernels.h"

namespace dvfl {
namespace avx2 {

template <typename acc_t>
void kd_ce_row_entry(const acc_t* s, const acc_t* t, const acc_t* q, int64_t label, int64_t K, acc_t alpha,
                     acc_t temperature, acc_t eps, acc_t* scratch, acc_t* grad, double out[3]) {
  const RowResult r = kd_ce_row<acc_t>(s, t, q, label, K, alpha, temperature, eps, scratch, grad);
  out[0] = r.total, out[1] = r.kd, out[2] = r.ce;
}

template void kd_ce_row_entry<float>(const float*, const float*, const float*, int64_t, int64_t, float, float, float,
                                     float*, float*, double[3]);
template void kd_ce_row_entry<double>(const double*, const double*, const double*, int64_t, int64_t, double, double,
                                      double, double*, double*, double[3]);

}  // namespace avx2
}  // namespace dvfl
