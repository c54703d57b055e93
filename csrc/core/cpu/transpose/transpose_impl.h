// fp32 transpose, dst (cols x rows) = src (rows x cols)^T, each with its row stride: the layout change
// around the SpMM (x -> x^T, y^T -> y), which a strided copy does at a few GB/s because the
// side written with a long stride maps whole blocks onto a few cache sets.
// Whole register tiles (16 x 16 on AVX-512, 8 x 8 on AVX2, through a small buffer otherwise),
// then the ragged edges element by element. Written once and compiled per ISA (internal
// linkage, so variants never mix).
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

#if defined(__AVX512F__)
constexpr int64_t kTile = 16;

// The 16 x 16 tile at (r0, c0): four rounds of in-register shuffles (pairs, quads, lane pairs,
// lanes), each output row one 64-byte store.
inline void transpose_tile(const float* src, int64_t ld_dst, int64_t ld_src, float* dst, int64_t r0, int64_t c0) {
  __m512 a[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm512_loadu_ps(src + (r0 + i) * ld_src + c0);
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: elements of rows i, i + 1 interleaved
    b[i] = _mm512_unpacklo_ps(a[i], a[i + 1]);
    b[i + 1] = _mm512_unpackhi_ps(a[i], a[i + 1]);
  }
  for (int j = 0; j < 16; j += 4) {  // lane l of a[j + m]: column 4 l + m of rows j .. j + 3
    a[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b[j]), _mm512_castps_pd(b[j + 2])));
    a[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b[j]), _mm512_castps_pd(b[j + 2])));
    a[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b[j + 1]), _mm512_castps_pd(b[j + 3])));
    a[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b[j + 1]), _mm512_castps_pd(b[j + 3])));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 low_lanes_top = _mm512_shuffle_f32x4(a[m], a[4 + m], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 high_lanes_top = _mm512_shuffle_f32x4(a[m], a[4 + m], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 low_lanes_bottom = _mm512_shuffle_f32x4(a[8 + m], a[12 + m], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 high_lanes_bottom = _mm512_shuffle_f32x4(a[8 + m], a[12 + m], _MM_SHUFFLE(3, 2, 3, 2));
    float* out = dst + (c0 + m) * ld_dst + r0;
    _mm512_storeu_ps(out, _mm512_shuffle_f32x4(low_lanes_top, low_lanes_bottom, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_ps(out + 4 * ld_dst, _mm512_shuffle_f32x4(low_lanes_top, low_lanes_bottom, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_ps(out + 8 * ld_dst,
                     _mm512_shuffle_f32x4(high_lanes_top, high_lanes_bottom, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_ps(out + 12 * ld_dst,
                     _mm512_shuffle_f32x4(high_lanes_top, high_lanes_bottom, _MM_SHUFFLE(3, 1, 3, 1)));
  }
}
#elif defined(__AVX2__)
constexpr int64_t kTile = 8;

// The 8 x 8 tile at (r0, c0): pairs, quads, then 128-bit halves.
inline void transpose_tile(const float* src, int64_t ld_dst, int64_t ld_src, float* dst, int64_t r0, int64_t c0) {
  __m256 a[8], b[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm256_loadu_ps(src + (r0 + i) * ld_src + c0);
  for (int i = 0; i < 8; i += 2) {
    b[i] = _mm256_unpacklo_ps(a[i], a[i + 1]);
    b[i + 1] = _mm256_unpackhi_ps(a[i], a[i + 1]);
  }
  for (int j = 0; j < 8; j += 4) {  // half h of a[j + m]: column 4 h + m of rows j .. j + 3
    a[j] = _mm256_shuffle_ps(b[j], b[j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    a[j + 1] = _mm256_shuffle_ps(b[j], b[j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    a[j + 2] = _mm256_shuffle_ps(b[j + 1], b[j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    a[j + 3] = _mm256_shuffle_ps(b[j + 1], b[j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int m = 0; m < 4; ++m) {
    float* out = dst + (c0 + m) * ld_dst + r0;
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(a[m], a[4 + m], 0x20));
    _mm256_storeu_ps(out + 4 * ld_dst, _mm256_permute2f128_ps(a[m], a[4 + m], 0x31));
  }
}
#else
constexpr int64_t kTile = 16;

// Through a buffer: contiguous reads of the tile's rows, then contiguous writes of its columns.
inline void transpose_tile(const float* src, int64_t ld_dst, int64_t ld_src, float* dst, int64_t r0, int64_t c0) {
  float buffer[kTile][kTile];
  for (int64_t i = 0; i < kTile; ++i)
    for (int64_t j = 0; j < kTile; ++j) buffer[j][i] = src[(r0 + i) * ld_src + c0 + j];
  for (int64_t j = 0; j < kTile; ++j)
    for (int64_t i = 0; i < kTile; ++i) dst[(c0 + j) * ld_dst + r0 + i] = buffer[j][i];
}
#endif

// Rows [row_begin, row_end) of src (`cols` entries each, `ld_src` apart) into columns
// [row_begin, row_end) of dst (rows `ld_dst` apart).
inline void transpose_rows(const float* src, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst,
                           int64_t row_begin, int64_t row_end) {
  int64_t r0 = row_begin;
  for (; r0 + kTile <= row_end; r0 += kTile) {
    int64_t c0 = 0;
    for (; c0 + kTile <= cols; c0 += kTile) transpose_tile(src, ld_dst, ld_src, dst, r0, c0);
    for (int64_t r = r0; r < r0 + kTile; ++r)
      for (int64_t c = c0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
  }
  for (int64_t r = r0; r < row_end; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

}  // namespace
}  // namespace prunekit::cpu
