// Content digest for prepared weights (dvfl_kernels/_prepared.py).
//
// Writes through `.data`, through numpy or through any other alias skip the parameter's version
// counter, so the only test that sees every change is one that reads every byte. The digest is
//   sum_i mix(word_i) * (2 i + 1)   (mod 2^64)
// over the data's 64-bit words (the tail zero-padded), with `mix` a bijection of 64-bit words
// (three xor-shifts, no multiply: the sum's one multiply a word keeps it near memory speed). A change of any one word always changes the digest:
// mix(w) != mix(w') and an odd factor is invertible mod 2^64. Changes of several words cancel only
// by chance (about 2^-64). The sum is linear, so threads reduce chunks independently and add them.
// Memory-bound: one read of the weights, no copy.
#include "content_digest.h"

#include <ATen/Parallel.h>

#include "../cpu_capability.h"

#include <cstring>

namespace dvfl {
namespace {

inline __attribute__((always_inline)) uint64_t mix(uint64_t w) {
  w ^= w >> 29;  // each xor-shift step is invertible; together they spread every bit of w over the
  w ^= w << 23;  // word, so structured edits (swapping 1.0 and 2.0 among zeros) do not cancel in the sum
  w ^= w >> 31;
  return w;
}

// sum + the terms of words [begin, end); inlined into each instruction-set build below, so that the
// compiler vectorises it for that set (64-bit multiplies need AVX-512 DQ to vectorise).
inline __attribute__((always_inline)) uint64_t add_terms(const unsigned char* bytes, int64_t begin, int64_t end,
                                                         uint64_t sum) {
  for (int64_t i = begin; i < end; ++i) {
    uint64_t w;
    std::memcpy(&w, bytes + 8 * i, 8);
    sum += mix(w) * (2 * static_cast<uint64_t>(i) + 1);
  }
  return sum;
}

__attribute__((target("avx512f,avx512dq,avx512vl,prefer-vector-width=512"))) uint64_t add_terms_avx512(
    const unsigned char* bytes, int64_t begin, int64_t end, uint64_t sum) {
  return add_terms(bytes, begin, end, sum);
}

uint64_t add_terms_base(const unsigned char* bytes, int64_t begin, int64_t end, uint64_t sum) {
  return add_terms(bytes, begin, end, sum);
}

// Words per task: large enough that a thread's start-up is noise (256 KiB of weights).
constexpr int64_t kGrainWords = 1 << 15;

}  // namespace

int64_t content_digest(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "content_digest: expected a CPU tensor, got one on ", t.device());
  const at::Tensor data = t.contiguous();
  const auto* bytes = static_cast<const unsigned char*>(data.data_ptr());
  const int64_t size = data.numel() * static_cast<int64_t>(data.element_size());
  const int64_t words = size / 8;
  static const bool avx512 = cpu_has_avx512();
  uint64_t digest = at::parallel_reduce(
      0, words, kGrainWords, uint64_t{0},
      [&](int64_t begin, int64_t end, uint64_t sum) {
        return avx512 ? add_terms_avx512(bytes, begin, end, sum) : add_terms_base(bytes, begin, end, sum);
      },
      [](uint64_t a, uint64_t b) { return a + b; });
  if (size % 8) {
    uint64_t tail = 0;
    std::memcpy(&tail, bytes + 8 * words, size % 8);
    digest += mix(tail) * (2 * static_cast<uint64_t>(words) + 1);
  }
  // the size too: a tensor and its zero-extended copy differ
  digest ^= mix(static_cast<uint64_t>(size));
  return static_cast<int64_t>(digest);
}

}  // namespace dvfl
