// Entry points of the per-capability CPU row kernels (kd_loss_cpu_row.h): one namespace per
// instruction set, explicitly instantiated for float and double in its own translation unit.
#pragma once
#include <cstdint>

namespace dvfl {

// One row: writes out = {total, kd, ce}; s, t: K logits (accumulation type); q: soft target or
// nullptr (then `label`); scratch: 3K values; grad: K outputs or nullptr.
#define DVFL_DECLARE_CPU_ROW(NS)                                                                        \
  namespace NS {                                                                                       \
  template <typename acc_t>                                                                            \
  void kd_ce_row_entry(const acc_t* s, const acc_t* t, const acc_t* q, int64_t label, int64_t K,         \
                       acc_t alpha, acc_t temperature, acc_t eps, acc_t* scratch, acc_t* grad, double out[3]); \
  }
DVFL_DECLARE_CPU_ROW(base)
DVFL_DECLARE_CPU_ROW(avx2)
#undef DVFL_DECLARE_CPU_ROW

}  // namespace dvfl
