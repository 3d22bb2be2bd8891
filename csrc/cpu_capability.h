// Which instruction set a CPU kernel family runs with, decided once per process from what this CPU
// supports. DVFL_CPU_CAPABILITY=base forces the baseline builds and =avx2 caps them at AVX2 (to test them
// on a CPU that has more).
#pragma once

#include <cstdlib>
#include <cstring>

namespace dvfl {

inline bool cpu_forced(const char* capability) {
  const char* forced = std::getenv("DVFL_CPU_CAPABILITY");
  return forced != nullptr && std::strcmp(forced, capability) == 0;
}

inline bool cpu_forced_base() { return cpu_forced("base"); }

inline bool cpu_has_avx2_fma() {
  return !cpu_forced_base() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

inline bool cpu_has_avx512() {
  return !cpu_forced_base() && !cpu_forced("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

}  // namespace dvfl
