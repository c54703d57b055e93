// Bitmap GEMV with bf16 weights and bf16 activations, for AVX-512 with BF16 (Cooper Lake,
// Sapphire Rapids, Zen 4 and later). Each 32-column chunk (two bitmap words) expands its packed
// values with one 16-bit expand and meets x through one vdpbf16ps: twice the columns per
// shuffle of the fp32 path, and no widening. Products of two bf16 numbers are exact in fp32 and
// sums are fp32; the instruction flushes denormal inputs and results to zero (bf16 denormals
// are below 1.2e-38).
#include <immintrin.h>

#include <cstring>

#include "gemv_row_sums_avx512.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

constexpr int64_t kChunkColumns = 32;
// How far ahead the values are prefetched (see bitmap-avx512.cc).
constexpr int64_t kValuePrefetchBytes = 4096;

inline uint32_t chunk_mask(const uint16_t* bm, int64_t chunk) {
  uint32_t mask;
  std::memcpy(&mask, bm + 2 * chunk, sizeof(mask));
  return mask;
}

// acc[b] += expand(mask, values[offset ..]) . x_b[columns of the chunk]; x lanes outside
// `x_mask` (past k) are read as zero. kWholeLoad: the caller has checked that a whole vector
// from `offset` stays inside `values`; otherwise the load covers the chunk's run only.
template <int B, bool kWholeLoad>
inline void chunk_dot(const uint16_t* values, int64_t offset, __mmask32 mask, unsigned count, const uint16_t* x,
                      int64_t k, int64_t column, __mmask32 x_mask, __m512* acc) {
  const __m512i packed = kWholeLoad
                             ? _mm512_loadu_si512(values + offset)
                             : _mm512_maskz_loadu_epi16(__mmask32(_bzhi_u32(0xffffffffu, count)), values + offset);
  const __m512bh weights = (__m512bh)_mm512_maskz_expand_epi16(mask, packed);
  for (int b = 0; b < B; ++b) {
    const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(x_mask, x + b * k + column);
    acc[b] = _mm512_dpbf16_ps(acc[b], weights, xv);
  }
}

// U whole chunks of a row from `chunk` on, the row's next value at `offset`; false, having read
// nothing, when the bitmap claims more values than end - offset (`end`: the row's end, or in the
// two-row walk the last offset from which a whole vector stays inside the values). The masks go straight from the
// bitmap into mask registers (a load, not a move through the shuffle port).
template <int B, int U, bool kWholeLoad>
[[gnu::always_inline]] inline bool chunk_step(const uint16_t* values, const uint16_t* bm, int64_t& offset, int64_t end,
                                              int64_t chunk, const uint16_t* x, int64_t k, __m512 (&acc)[U][B]) {
  unsigned counts[U];
  int64_t total = 0;
  for (int u = 0; u < U; ++u) {
    counts[u] = unsigned(__builtin_popcount(chunk_mask(bm, chunk + u)));
    total += counts[u];
  }
  if (offset + total > end) return false;
  // Software prefetch far ahead of the data-dependent value reads, the first and the last line of
  // the step's values (see bitmap-avx512.cc). Addresses past the weight are harmless (a prefetch
  // never faults): formed as integers.
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(values) + kValuePrefetchBytes;
  _mm_prefetch(reinterpret_cast<const char*>(ahead + offset * 2), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(ahead + (offset + total) * 2 - 1), _MM_HINT_T0);
  for (int u = 0; u < U; ++u) {
    const __mmask32 mask = _cvtu32_mask32(chunk_mask(bm, chunk + u));  // rows may start at odd words
    chunk_dot<B, kWholeLoad>(values, offset, mask, counts[u], x, k, (chunk + u) * kChunkColumns, __mmask32(0xffffffffu),
                             acc[u]);
    offset += counts[u];
  }
  return true;
}

// A row's chunks from `chunk` on (the last may be partial), then its sums into y; -1, or where the
// row is corrupt the column to report (the tail chunk's first column, else 0).
template <int B, int U, bool kWholeLoad>
[[gnu::always_inline]] inline int64_t finish_row(const uint16_t* values, const uint16_t* bm, int64_t offset,
                                                 int64_t limit, int64_t chunk, const uint16_t* x, int64_t k,
                                                 __m512 (&acc)[U][B], const float* bias, int64_t r, int64_t rows,
                                                 float* y) {
  const int64_t words = bitmap_words(k);
  const int64_t full_chunks = k / kChunkColumns;  // chunks entirely inside k (two whole words)
  const int64_t tail_columns = k - full_chunks * kChunkColumns;
  const uint32_t tail_bits = tail_columns ? uint32_t((uint64_t(1) << tail_columns) - 1) : 0;
  for (; chunk < full_chunks; ++chunk) {
    const uint32_t mask = chunk_mask(bm, chunk);
    const unsigned count = unsigned(__builtin_popcount(mask));
    if (offset + count > limit) return 0;
    chunk_dot<B, kWholeLoad>(values, offset, __mmask32(mask), count, x, k, chunk * kChunkColumns,
                             __mmask32(0xffffffffu), acc[0]);
    offset += count;
  }
  if (tail_columns) {
    // The last chunk may have a single word: never read a word past the row.
    const uint32_t mask = 2 * full_chunks + 1 < words ? chunk_mask(bm, full_chunks) : bm[2 * full_chunks];
    const unsigned count = unsigned(__builtin_popcount(mask));
    if ((mask & ~tail_bits) || offset + count > limit) return full_chunks * kChunkColumns;
    chunk_dot<B, false>(values, offset, __mmask32(mask), count, x, k, full_chunks * kChunkColumns, __mmask32(tail_bits),
                        acc[0]);
    offset += count;
  }
  if (offset != limit) return 0;
  store_row_sums<B, U>(acc, bias, r, rows, y);
  return -1;
}

// One row; -1, or where the bitmap disagrees with the row's offsets the column to report.
template <int B, int U, bool kWholeLoad>
inline int64_t gemv_row(const uint16_t* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows,
                        int64_t k, const uint16_t* x, const float* bias, float* y, int64_t r) {
  const uint16_t* bm = bitmap + r * bitmap_words(k);
  const int64_t full_chunks = k / kChunkColumns, limit = row_offsets[r + 1];
  __m512 acc[U][B];
  zero_row_sums(acc);
  int64_t offset = row_offsets[r], chunk = 0;
  for (; chunk + U <= full_chunks; chunk += U) {
    if (!chunk_step<B, U, kWholeLoad>(values, bm, offset, limit, chunk, x, k, acc)) return 0;
  }
  return finish_row<B, U, kWholeLoad>(values, bm, offset, limit, chunk, x, k, acc, bias, r, rows, y);
}

// B batch rows, U chunks in flight (independent accumulators hide the dot-product latency); the
// status names the first corrupt row.
template <int B, int U>
Status gemv_rows(const uint16_t* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                 const uint16_t* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t value_count = row_offsets[rows];
  for (int64_t r = row_begin; r < row_end; ++r) {
    // Whole-vector value loads read up to 31 values past the row: fine unless the row ends the buffer.
    const int64_t bad_column = row_offsets[r + 1] + kChunkColumns <= value_count
                                   ? gemv_row<B, U, true>(values, bitmap, row_offsets, rows, k, x, bias, y, r)
                                   : gemv_row<B, U, false>(values, bitmap, row_offsets, rows, k, x, bias, y, r);
    if (bad_column >= 0) return Status{StatusCode::kCorruptMeta, r, bad_column};
  }
  return Status{};
}

// Batch 1: rows from the two halves of [row_begin, row_end) in lockstep, two value streams far
// apart (see the fp32 GEMV in bitmap-avx512.cc), two chunks of each per step (faster from memory
// than four). Pairs whose second row ends the buffer, and corrupt weights, go row by row.
Status gemv_row_pairs(const uint16_t* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows,
                      int64_t k, const uint16_t* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  constexpr int U = 2;
  const int64_t words = bitmap_words(k), full_chunks = k / kChunkColumns;
  const int64_t value_count = row_offsets[rows], whole_load_end = value_count - kChunkColumns;
  const int64_t half = (row_end - row_begin) / 2;
  int64_t a = row_begin;
  for (; a < row_begin + half; ++a) {
    const int64_t b = a + half;
    if (row_offsets[b + 1] + kChunkColumns > value_count) break;  // b's whole-vector loads would pass the end
    const uint16_t* bm_a = bitmap + a * words;
    const uint16_t* bm_b = bitmap + b * words;
    __m512 acc_a[U][1], acc_b[U][1];
    zero_row_sums(acc_a);
    zero_row_sums(acc_b);
    int64_t offset_a = row_offsets[a], offset_b = row_offsets[b], chunk = 0;
    for (; chunk + U <= full_chunks; chunk += U) {
      // Whole-vector loads read 32 values from each offset: a step may not start one past
      // value_count - 32 (valid rows of a pair never do; a corrupt row is caught here).
      const bool ok_a = chunk_step<1, U, true>(values, bm_a, offset_a, whole_load_end, chunk, x, k, acc_a);
      const bool ok_b = chunk_step<1, U, true>(values, bm_b, offset_b, whole_load_end, chunk, x, k, acc_b);
      if (!(ok_a && ok_b)) return gemv_rows<1, U>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    }
    if (finish_row<1, U, true>(values, bm_a, offset_a, row_offsets[a + 1], chunk, x, k, acc_a, bias, a, rows, y) >= 0 ||
        finish_row<1, U, true>(values, bm_b, offset_b, row_offsets[b + 1], chunk, x, k, acc_b, bias, b, rows, y) >= 0) {
      return gemv_rows<1, U>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    }
  }
  // Rows not walked in pairs: [a, row_begin + half) and [a + half, row_end); a corrupt one is
  // named after a walk over the whole range, so that an earlier corrupt row comes first.
  if (!gemv_rows<1, U>(values, bitmap, row_offsets, rows, k, x, bias, y, a, row_begin + half).ok() ||
      !gemv_rows<1, U>(values, bitmap, row_offsets, rows, k, x, bias, y, a + half, row_end).ok()) {
    return gemv_rows<1, U>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
  return Status{};
}

}  // namespace

Status bitmap_bf16_gemv_avx512bf16(const BitmapWeightView& w, const GemvBf16Args& a, RowRange range) {
  if (w.value_type != ValueType::kBFloat16) return Status{StatusCode::kBadArgument, 0, 0};
  const auto* values = static_cast<const uint16_t*>(w.values);
  const uint16_t* bitmap = w.bitmap;
  const int64_t* row_offsets = w.row_offsets;
  const int64_t rows = w.rows, k = w.cols, row_begin = range.begin, row_end = range.end;
  const uint16_t* x = a.x;
  const float* bias = a.bias;
  float* y = a.y;
  switch (a.batch) {
    case 1: return gemv_row_pairs(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 2: return gemv_rows<2, 2>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3, 1>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4, 1>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

}  // namespace prunekit::cpu
