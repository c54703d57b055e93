// bf16 bit patterns widened to fp32 vectors in the x86 kernel variants: a bf16 is the high half
// of an fp32, so zero-extend each to 32 bits and shift left by 16 (exact). Only what the
// including file's target flags allow is defined, with internal linkage, so that variants built
// with different flags never share a definition.
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>

namespace prunekit::cpu {
namespace {

// The low four bf16 of `bits`.
inline __m128 widen_bf16x4(__m128i bits) { return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(bits), 16)); }

inline __m256 widen_bf16x8(__m128i bits) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

#if defined(__AVX512F__)
inline __m512 widen_bf16x16(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
#endif

}  // namespace
}  // namespace prunekit::cpu
#endif
