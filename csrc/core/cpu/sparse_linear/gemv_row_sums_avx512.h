// The first and last steps of the AVX-512 GEMVs (fp32 and bf16 variants): zero a row's U x B
// accumulators; reduce them and store y[b][r] = sum + bias[r]. Included by variant files built with AVX-512 flags;
// internal linkage so that variants with different flags never share a definition.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace prunekit::cpu {
namespace {

template <int B, int U>
inline void zero_row_sums(__m512 (&acc)[U][B]) {
  for (int u = 0; u < U; ++u)
    for (int b = 0; b < B; ++b) acc[u][b] = _mm512_setzero_ps();
}

template <int B, int U>
inline void store_row_sums(const __m512 (&acc)[U][B], const float* bias, int64_t r, int64_t rows, float* y) {
  for (int b = 0; b < B; ++b) {
    __m512 sum = acc[0][b];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][b]);
    y[b * rows + r] = _mm512_reduce_add_ps(sum) + (bias ? bias[r] : 0.0f);
  }
}

}  // namespace
}  // namespace prunekit::cpu
