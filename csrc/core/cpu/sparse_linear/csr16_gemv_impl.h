// CSR16 sparse linear GEMV: each nonzero is one scalar load of x at its 16-bit column index and one
// multiply-add. At high sparsity this beats the bitmap kernels, whose cost is per 16-column word
// (expanding mostly-empty words) rather than per nonzero: plain scalar loads and FMAs run on every
// CPU at two to three per cycle, with no shuffles and no gathers (microcoded on several CPUs).
// Written once and compiled per ISA: the variant .cc files include this with their own target
// flags; the AVX2 + FMA build multiplies four nonzeros per instruction, the AVX-512 build sixteen
// (x by one gather, fast on Intel cores since Ice Lake; on AMD, where gathers are microcode, the
// kernel table runs the AVX2 build). Internal linkage, so variants never mix.
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "prunekit/bf16_x86.h"
#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

template <ValueType T>
inline float value_at(const void* values, int64_t i) {
  if constexpr (T == ValueType::kFloat32) {
    return static_cast<const float*>(values)[i];
  } else {
    return bf16_to_float(static_cast<const uint16_t*>(values)[i]);
  }
}

// The highest column a row names, in a pass the compiler vectorizes (the row's indices are then
// in L1 for the products): checking first lets the product loop read x unchecked.
inline uint32_t highest_column(const uint16_t* col_indices, int64_t begin, int64_t end) {
  uint16_t highest = 0;
  for (int64_t i = begin; i < end; ++i) highest = col_indices[i] > highest ? col_indices[i] : highest;
  return highest;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// Up to sixteen nonzeros from i: their values (bf16 widened) and their x, gathered by index.
// Lanes outside `lanes` are zero and read nothing (masked loads and gather), so a row's
// remainder needs no scalar loop and nothing past the row's span is touched.
template <ValueType T>
inline __m512 sixteen_values(const void* values, int64_t i, __mmask16 lanes) {
  if constexpr (T == ValueType::kFloat32) {
    return _mm512_maskz_loadu_ps(lanes, static_cast<const float*>(values) + i);
  } else {
    const __m256i bits = _mm256_maskz_loadu_epi16(lanes, static_cast<const uint16_t*>(values) + i);
    return widen_bf16x16(bits);
  }
}

inline __m512i sixteen_columns(const uint16_t* col_indices, int64_t i, __mmask16 lanes) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, col_indices + i));
}

// Nonzeros ahead of the multiply-adds at which the values and indices are prefetched into L1:
// the weight streams from L3 or DRAM, and the gathers keep too few loads of it in flight to cover
// the latency.
constexpr int64_t kPrefetchNonzeros = 1024;

// The cache lines of nonzeros [i, i + 64) + kPrefetchNonzeros. Addresses past the weight are
// harmless (a prefetch never faults) and are formed as integers, never as pointers.
template <ValueType T>
inline void prefetch_ahead(const void* values, const uint16_t* col_indices, int64_t i) {
  constexpr int64_t kValueBytes = T == ValueType::kFloat32 ? 4 : 2;
  const uintptr_t value_line = reinterpret_cast<uintptr_t>(values) + uintptr_t(i + kPrefetchNonzeros) * kValueBytes;
  for (int64_t line = 0; line < 64 * kValueBytes; line += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(value_line + line), _MM_HINT_T0);
  }
  const uintptr_t index_line = reinterpret_cast<uintptr_t>(col_indices) + uintptr_t(i + kPrefetchNonzeros) * 2;
  _mm_prefetch(reinterpret_cast<const char*>(index_line), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(index_line + 64), _MM_HINT_T0);
}

inline __m512 gather_x(const float* x, __m512i columns, __mmask16 lanes) {
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, columns, x, 4);
}
#elif defined(__AVX2__) && defined(__FMA__)
// Four nonzeros at a time: their values as one vector, their x assembled from four scalar loads
// (vinsertps with a memory operand), one vector multiply-add: faster than four scalar
// multiply-adds (fewer instructions per nonzero, and bf16 values widen four at a time).
template <ValueType T>
inline __m128 four_values(const void* values, int64_t i) {
  if constexpr (T == ValueType::kFloat32) {
    return _mm_loadu_ps(static_cast<const float*>(values) + i);
  } else {
    const __m128i bits = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(values) + i));
    return widen_bf16x4(bits);
  }
}

inline __m128 four_x(const float* x, const uint16_t* columns) {
  __m128 v = _mm_load_ss(x + columns[0]);
  v = _mm_insert_ps(v, _mm_load_ss(x + columns[1]), 0x10);
  v = _mm_insert_ps(v, _mm_load_ss(x + columns[2]), 0x20);
  return _mm_insert_ps(v, _mm_load_ss(x + columns[3]), 0x30);
}

inline float lane_sum(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// A row's walk on AVX-512: its sums in two chains of vector multiply-adds per batch row, and
// whether every index so far was below k (lanes past k are masked out of the gather, so nothing
// out of bounds is read). Free functions on the caller's named locals: GCC keeps those of two rows
// in registers.
template <int B>
struct Csr16Sums {
  __m512 even[B], odd[B];
  __mmask16 inside;
};

template <int B>
[[gnu::always_inline]] inline void start_sums(Csr16Sums<B>& s) {
  for (int b = 0; b < B; ++b) s.even[b] = s.odd[b] = _mm512_setzero_ps();
  s.inside = 0xffff;
}

// Nonzeros [i, i + 64).
template <int B, ValueType T>
[[gnu::always_inline]] inline void sixty_four_nonzeros(Csr16Sums<B>& s, const void* values, const uint16_t* col_indices,
                                                       int64_t i, int64_t k, const float* x) {
  const __mmask16 all = 0xffff;
  const __m512i limit = _mm512_set1_epi32(int32_t(k));
  prefetch_ahead<T>(values, col_indices, i);
  const __m512 w0 = sixteen_values<T>(values, i, all), w1 = sixteen_values<T>(values, i + 16, all);
  const __m512 w2 = sixteen_values<T>(values, i + 32, all), w3 = sixteen_values<T>(values, i + 48, all);
  const __m512i c0 = sixteen_columns(col_indices, i, all), c1 = sixteen_columns(col_indices, i + 16, all);
  const __m512i c2 = sixteen_columns(col_indices, i + 32, all), c3 = sixteen_columns(col_indices, i + 48, all);
  const __mmask16 m0 = _mm512_cmplt_epu32_mask(c0, limit), m1 = _mm512_cmplt_epu32_mask(c1, limit);
  const __mmask16 m2 = _mm512_cmplt_epu32_mask(c2, limit), m3 = _mm512_cmplt_epu32_mask(c3, limit);
  s.inside &= m0 & m1 & m2 & m3;
  for (int b = 0; b < B; ++b) {
    s.even[b] = _mm512_fmadd_ps(w0, gather_x(x + b * k, c0, m0), s.even[b]);
    s.odd[b] = _mm512_fmadd_ps(w1, gather_x(x + b * k, c1, m1), s.odd[b]);
    s.even[b] = _mm512_fmadd_ps(w2, gather_x(x + b * k, c2, m2), s.even[b]);
    s.odd[b] = _mm512_fmadd_ps(w3, gather_x(x + b * k, c3, m3), s.odd[b]);
  }
}

// Nonzeros [i, end): whole blocks of 64, then up to 16 at a time; the sums into `sums`. Returns
// whether every index of the row was below k.
template <int B, ValueType T>
[[gnu::always_inline]] inline bool finish_row(Csr16Sums<B>& s, const void* values, const uint16_t* col_indices,
                                              int64_t i, int64_t end, int64_t k, const float* x, float* sums) {
  const __mmask16 all = 0xffff;
  const __m512i limit = _mm512_set1_epi32(int32_t(k));
  for (; i + 64 <= end; i += 64) sixty_four_nonzeros<B, T>(s, values, col_indices, i, k, x);
  for (; i < end; i += 16) {
    const __mmask16 lanes = end - i >= 16 ? all : __mmask16((1u << (end - i)) - 1);
    const __m512 w = sixteen_values<T>(values, i, lanes);
    const __m512i c = sixteen_columns(col_indices, i, lanes);
    const __mmask16 m = _mm512_cmplt_epu32_mask(c, limit);  // lanes past the row hold column 0
    s.inside &= m;
    for (int b = 0; b < B; ++b) s.even[b] = _mm512_fmadd_ps(w, gather_x(x + b * k, c, m & lanes), s.even[b]);
  }
  for (int b = 0; b < B; ++b) sums[b] = _mm512_reduce_add_ps(_mm512_add_ps(s.even[b], s.odd[b]));
  return s.inside == all;
}
#endif

// Row r's dot products with the batch rows of x into sums. Returns false, having read nothing
// out of bounds, when the row names a column >= k. The AVX-512 build checks each index vector as it
// goes (lanes past k are masked out of the gather); the others check the row first.
template <int B, ValueType T>
inline bool row_dot(const void* values, const uint16_t* col_indices, int64_t i, int64_t end, int64_t k, const float* x,
                    float* sums) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  Csr16Sums<B> s;
  start_sums(s);
  return finish_row<B, T>(s, values, col_indices, i, end, k, x, sums);
#else
  if (i < end && int64_t(highest_column(col_indices, i, end)) >= k) return false;
#if defined(__AVX2__) && defined(__FMA__)
  __m128 even[B], odd[B];  // two chains of vector multiply-adds
  for (int b = 0; b < B; ++b) even[b] = odd[b] = _mm_setzero_ps();
  for (; i + 8 <= end; i += 8) {
    const __m128 w0 = four_values<T>(values, i), w1 = four_values<T>(values, i + 4);
    for (int b = 0; b < B; ++b) {
      even[b] = _mm_fmadd_ps(w0, four_x(x + b * k, col_indices + i), even[b]);
      odd[b] = _mm_fmadd_ps(w1, four_x(x + b * k, col_indices + i + 4), odd[b]);
    }
  }
  for (int b = 0; b < B; ++b) sums[b] = lane_sum(_mm_add_ps(even[b], odd[b]));
#else
  // Four partial sums per batch row, so that four multiply-adds are in flight.
  float partial[B][4] = {};
  for (; i + 4 <= end; i += 4) {
    for (int j = 0; j < 4; ++j) {
      const float w = value_at<T>(values, i + j);
      const uint32_t c = col_indices[i + j];
      for (int b = 0; b < B; ++b) partial[b][j] += w * x[b * k + c];
    }
  }
  for (int b = 0; b < B; ++b) sums[b] = (partial[b][0] + partial[b][1]) + (partial[b][2] + partial[b][3]);
#endif
  for (; i < end; ++i) {
    const float w = value_at<T>(values, i);
    const uint32_t c = col_indices[i];
    for (int b = 0; b < B; ++b) sums[b] += w * x[b * k + c];
  }
  return true;
#endif
}

template <int B, ValueType T>
Status gemv_rows(const void* values, const uint16_t* col_indices, const int64_t* row_offsets, int64_t rows, int64_t k,
                 const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t begin = row_offsets[r], end = row_offsets[r + 1];
    float sums[B];
    if (!row_dot<B, T>(values, col_indices, begin, end, k, x, sums)) {
      return Status{StatusCode::kCorruptMeta, r, int64_t(highest_column(col_indices, begin, end))};
    }
    for (int b = 0; b < B; ++b) y[b * rows + r] = sums[b] + (bias ? bias[r] : 0.0f);
  }
  return Status{};
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// Batch 1 on AVX-512: rows from the two halves of [row_begin, row_end) in lockstep, 64 nonzeros of
// each at a time. Two weight streams far apart keep more of the weight in flight from memory than
// one (the hardware prefetchers follow each; see the bitmap GEMV). A row naming a column >= k is
// found again by the row-by-row walk, which names the first such row.
template <ValueType T>
Status gemv_row_pairs(const void* values, const uint16_t* col_indices, const int64_t* row_offsets, int64_t rows,
                      int64_t k, const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t a = row_begin; a < row_begin + half; ++a) {
    const int64_t b = a + half;
    int64_t i_a = row_offsets[a], i_b = row_offsets[b];
    const int64_t end_a = row_offsets[a + 1], end_b = row_offsets[b + 1];
    Csr16Sums<1> s_a, s_b;
    start_sums(s_a);
    start_sums(s_b);
    for (; i_a + 64 <= end_a && i_b + 64 <= end_b; i_a += 64, i_b += 64) {
      sixty_four_nonzeros<1, T>(s_a, values, col_indices, i_a, k, x);
      sixty_four_nonzeros<1, T>(s_b, values, col_indices, i_b, k, x);
    }
    float sum_a, sum_b;
    const bool ok_a = finish_row<1, T>(s_a, values, col_indices, i_a, end_a, k, x, &sum_a);
    const bool ok_b = finish_row<1, T>(s_b, values, col_indices, i_b, end_b, k, x, &sum_b);
    if (!(ok_a && ok_b))
      return gemv_rows<1, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    y[a] = sum_a + (bias ? bias[a] : 0.0f);
    y[b] = sum_b + (bias ? bias[b] : 0.0f);
  }
  // The odd row out.
  return gemv_rows<1, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin + 2 * half, row_end);
}
#endif

template <ValueType T>
Status gemv_batch(const void* values, const uint16_t* col_indices, const int64_t* row_offsets, int64_t rows, int64_t k,
                  const float* x, int64_t batch, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  switch (batch) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    case 1: return gemv_row_pairs<T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
#else
    case 1: return gemv_rows<1, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
#endif
    case 2: return gemv_rows<2, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

// The variant entry points: argument checks, then the value type and the batch as template
// parameters.
inline Status csr16_gemv_impl(const Csr16WeightView& w, const GemvArgs& a, RowRange range) {
  const int64_t k = w.cols;
  if (a.batch < 1 || a.batch > kGemvMaxBatch || k < 1 || k > kCsr16MaxColumns) {
    return Status{StatusCode::kBadArgument, 0, 0};
  }
  if (w.value_type == ValueType::kFloat32) {
    return gemv_batch<ValueType::kFloat32>(w.values, w.col_indices, w.row_offsets, w.rows, k, a.x, a.batch, a.bias, a.y,
                                           range.begin, range.end);
  }
  return gemv_batch<ValueType::kBFloat16>(w.values, w.col_indices, w.row_offsets, w.rows, k, a.x, a.batch, a.bias, a.y,
                                          range.begin, range.end);
}

}  // namespace
}  // namespace prunekit::cpu
