// Bitmap sparse linear / 1x1 conv kernels for AVX-512 (F, BW, VL, DQ, VBMI2).
// GEMV (batch <= 4, memory bound): each 16-column word expands its packed values into a vector
// with one expand-load (vexpandps / vpexpandw), so the weight streams once at full bandwidth.
// SpMM (larger batches, 1x1 conv): each output row's nonzeros are decoded once, then broadcast
// against 64-wide tiles of the dense operand held in 4 accumulators (XNNPACK's SpMM scheme).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemv_row_sums_avx512.h"
#include "prunekit/bf16_x86.h"
#include "prunekit/kernels_cpu.h"
#include "spmm_avx512_impl.h"

namespace prunekit::cpu {
namespace {

// The value stream's next reads are data dependent (each word advances by its popcount), and the
// hardware prefetchers run too short a distance ahead of them: prefetch this far ahead in
// software, the first and the last line of each step's values (at 50% a step reads two lines; a
// loop over exactly the lines a step reads mispredicts its branch too often to pay). The distance
// is the fastest measured with the weight from memory.
constexpr int64_t kValuePrefetchBytes = 4096;

template <bool kFloat32>
inline __m512 expand_values(const void* values, int64_t offset, __mmask16 mask) {
  if (kFloat32) return _mm512_maskz_expandloadu_ps(mask, static_cast<const float*>(values) + offset);
  // bf16: load the packed run, widen to fp32, then expand in registers (the 16-bit
  // expand-load is slow on some cores, e.g. Zen 4).
  const __mmask16 run = __mmask16(_bzhi_u32(0xffffu, unsigned(__builtin_popcount(mask))));
  const __m256i halves = _mm256_maskz_loadu_epi16(run, static_cast<const uint16_t*>(values) + offset);
  const __m512 packed = widen_bf16x16(halves);
  return _mm512_maskz_expand_ps(mask, packed);
}

// GEMV steps: one row's dot products with B batch rows of x, four words per step, each word with
// its own accumulators (independent FMA chains). A step reads its four masks as one 64-bit word:
// the four value offsets come from popcounts of its prefixes, independent of each other, instead of
// a chain of popcount-and-add per word. (Moving the masks into mask registers straight from memory
// measured slower on this Xeon.)
constexpr int kStepWords = 4;

// Words [w, w + 4) of a row whose next value is at `offset`; false, having read nothing past `end`,
// where the bitmap marks more values than end - offset. (The two-row GEMV passes the end of all the
// values, not the row's own: a register per row it does not have to spare; a row that disagrees
// with its offsets is caught at its end.)
template <int B, bool kFloat32>
[[gnu::always_inline]] inline bool gemv_step(__m512 (&acc)[kStepWords][B], const uint16_t* bm, int64_t& offset,
                                             const void* values, const float* x, int64_t k, int64_t w, int64_t end) {
  constexpr int kValueBytes = kFloat32 ? 4 : 2;
  uint64_t four;
  std::memcpy(&four, bm + w, sizeof(four));
  const int64_t total = __builtin_popcountll(four);
  if (offset + total > end) return false;
  // Addresses past the weight are harmless (a prefetch never faults): formed as integers.
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(values) + kValuePrefetchBytes;
  _mm_prefetch(reinterpret_cast<const char*>(ahead + offset * kValueBytes), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(ahead + (offset + total) * kValueBytes - 1), _MM_HINT_T0);
  const int64_t at[kStepWords] = {offset, offset + __builtin_popcountll(four & 0xffffu),
                                  offset + __builtin_popcountll(four & 0xffffffffu),
                                  offset + __builtin_popcountll(four & 0xffffffffffffu)};
  for (int u = 0; u < kStepWords; ++u) {
    const __m512 weights = expand_values<kFloat32>(values, at[u], __mmask16(four >> (16 * u)));
    for (int b = 0; b < B; ++b) {
      acc[u][b] = _mm512_fmadd_ps(weights, _mm512_loadu_ps(x + b * k + (w + u) * kBitmapWordBits), acc[u][b]);
    }
  }
  offset += total;
  return true;
}

// A row's words from w on, one at a time (the last may be partial), then its sums into y; -1, or
// where the row is corrupt the column to report (a bad word's first column, 0 where the row does
// not end at `limit`, the end of its span).
template <int B, bool kFloat32>
[[gnu::always_inline]] inline int64_t gemv_finish(__m512 (&acc)[kStepWords][B], const uint16_t* bm, int64_t offset,
                                                  const void* values, const float* x, int64_t k, int64_t w,
                                                  int64_t limit, const float* bias, int64_t r, int64_t rows, float* y) {
  const int64_t words = bitmap_words(k), full_words = k / kBitmapWordBits;
  const __mmask16 tail_mask = __mmask16((1u << (k % kBitmapWordBits)) - 1);
  for (; w < words; ++w) {
    const __mmask16 mask = bm[w];
    const bool past_k = w >= full_words && (mask & ~tail_mask);
    if (past_k || offset + __builtin_popcount(mask) > limit) return w * kBitmapWordBits;
    const __m512 weights = expand_values<kFloat32>(values, offset, mask);
    offset += __builtin_popcount(mask);
    const __mmask16 x_mask = w < full_words ? __mmask16(0xffff) : tail_mask;
    for (int b = 0; b < B; ++b) {
      acc[0][b] = _mm512_fmadd_ps(weights, _mm512_maskz_loadu_ps(x_mask, x + b * k + w * kBitmapWordBits), acc[0][b]);
    }
  }
  if (offset != limit) return 0;
  store_row_sums<B, kStepWords>(acc, bias, r, rows, y);
  return -1;
}

// Rows one at a time; the status names the first corrupt row.
template <int B, bool kFloat32>
Status gemv_rows(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                 const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k), full_words = k / kBitmapWordBits;
  for (int64_t r = row_begin; r < row_end; ++r) {
    __m512 acc[kStepWords][B];
    zero_row_sums(acc);
    const uint16_t* bm = bitmap + r * words;
    int64_t offset = row_offsets[r], w = 0;
    for (; w + kStepWords <= full_words; w += kStepWords) {
      if (!gemv_step<B, kFloat32>(acc, bm, offset, values, x, k, w, row_offsets[r + 1])) {
        return Status{StatusCode::kCorruptMeta, r, w * kBitmapWordBits};
      }
    }
    const int64_t bad_column =
        gemv_finish<B, kFloat32>(acc, bm, offset, values, x, k, w, row_offsets[r + 1], bias, r, rows, y);
    if (bad_column >= 0) return Status{StatusCode::kCorruptMeta, r, bad_column};
  }
  return Status{};
}

// Batch 1: rows from the two halves of [row_begin, row_end) in lockstep. Two value streams far
// apart keep more of the weight in flight from memory than one (the hardware prefetchers follow
// each). A corrupt weight is walked again row by row, so that the status names the first corrupt
// row whichever half found it.
template <bool kFloat32>
Status gemv_row_pairs(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                      const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k), full_words = k / kBitmapWordBits;
  const int64_t end = row_offsets[rows];  // the end of the values
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t a = row_begin; a < row_begin + half; ++a) {
    const int64_t b = a + half;
    __m512 acc_a[kStepWords][1], acc_b[kStepWords][1];
    zero_row_sums(acc_a);
    zero_row_sums(acc_b);
    const uint16_t* bm_a = bitmap + a * words;
    const uint16_t* bm_b = bitmap + b * words;
    int64_t offset_a = row_offsets[a], offset_b = row_offsets[b], w = 0;
    for (; w + kStepWords <= full_words; w += kStepWords) {
      const bool ok_a = gemv_step<1, kFloat32>(acc_a, bm_a, offset_a, values, x, k, w, end);
      const bool ok_b = gemv_step<1, kFloat32>(acc_b, bm_b, offset_b, values, x, k, w, end);
      if (!(ok_a && ok_b))
        return gemv_rows<1, kFloat32>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    }
    if (gemv_finish<1, kFloat32>(acc_a, bm_a, offset_a, values, x, k, w, row_offsets[a + 1], bias, a, rows, y) >= 0 ||
        gemv_finish<1, kFloat32>(acc_b, bm_b, offset_b, values, x, k, w, row_offsets[b + 1], bias, b, rows, y) >= 0) {
      return gemv_rows<1, kFloat32>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    }
  }
  // The odd row out.
  return gemv_rows<1, kFloat32>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin + 2 * half, row_end);
}

// The bitmap's side of the SpMM (a RowSource, spmm_avx512_impl.h): each row's k-block decoded
// into columns, branch-free (each word's set bits become column indices by one vector compress).
class BitmapRows {
 public:
  using Index = int32_t;
  BitmapRows(const uint16_t* bitmap, int64_t k)
      : bitmap_(bitmap), words_(bitmap_words(k)), last_word_bits_(bitmap_last_word_bits(k)) {}

  void prefetch(int64_t r, int64_t c0, int64_t c1, int64_t /*at*/, int64_t /*nonzeros*/) const {
    prefetch_lines(reinterpret_cast<uintptr_t>(bitmap_ + r * words_ + c0 / kBitmapWordBits), (c1 - c0) / 8);
  }

  bool columns(int64_t r, int64_t c0, int64_t c1, bool last, int64_t at, int64_t limit, const int32_t*& column,
               int64_t& nnz) {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i word_step = _mm512_set1_epi32(kBitmapWordBits);
    const uint16_t* bm = bitmap_ + r * words_;
    const int64_t w0 = c0 / kBitmapWordBits, w1 = (c1 + kBitmapWordBits - 1) / kBitmapWordBits;
    // 16 entries of slack: the compress stores whole vectors.
    if (int64_t(column_.size()) < (w1 - w0) * kBitmapWordBits + 16) column_.resize((w1 - w0) * kBitmapWordBits + 16);
    column = column_.data();
    nnz = 0;
    __m512i index = _mm512_add_epi32(lanes, _mm512_set1_epi32(int32_t(c0)));
    for (int64_t w = w0; w < w1; ++w) {
      const __mmask16 mask = _load_mask16(const_cast<__mmask16*>(reinterpret_cast<const __mmask16*>(bm + w)));
      _mm512_storeu_si512(column_.data() + nnz, _mm512_maskz_compress_epi32(mask, index));
      nnz += __builtin_popcount(bm[w]);
      index = _mm512_add_epi32(index, word_step);
    }
    return bitmap_block_in_span(bm, words_, last_word_bits_, last, at, nnz, limit);
  }

 private:
  const uint16_t* bitmap_;
  int64_t words_;
  uint32_t last_word_bits_;
  std::vector<int32_t> column_;
};

// X of at most 16 columns (one vector) and a dense-ish weight: each row's words are expanded
// (zeros included) and multiplied as a dense 16-column block, R rows at a time sharing each loaded
// row of X; the expanded weights go through a stack buffer so that each multiply-add takes its
// broadcast from memory (a load, where a broadcast from a register lane would cost a shuffle on
// the port the multiply-adds need). 16 multiply-adds per word and row whatever its nonzeros, with
// no decode and no data-dependent branch: faster than the nonzero-wise SpMM below about 62%
// sparsity with one vector of X, and no faster with two.
template <int R, bool kFloat32>
bool expanded_rows(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t k, const float* x,
                   int64_t ldx, __mmask16 lanes, const float* bias, Activation activation, float* y, int64_t ldy,
                   int64_t r0, int64_t& bad_row, int64_t& bad_column) {
  constexpr int kValueBytes = kFloat32 ? 4 : 2;
  const int64_t words = bitmap_words(k);
  const int64_t tail = k - (words - 1) * kBitmapWordBits;  // columns of the last word
  const __mmask16 tail_mask = __mmask16(tail == 16 ? 0xffffu : (1u << tail) - 1);
  alignas(64) float expanded[R][16];
  int64_t at[R];
  __m512 acc[R];
  for (int r = 0; r < R; ++r) {
    at[r] = row_offsets[r0 + r];
    acc[r] = _mm512_set1_ps(bias ? bias[r0 + r] : 0.0f);
  }
  for (int64_t w = 0; w < words; ++w) {
    const bool last_word = w + 1 == words;
    for (int r = 0; r < R; ++r) {
      const __mmask16 mask = bitmap[(r0 + r) * words + w];
      // Every read of `values` stays inside the row's span; no mark past k.
      if ((last_word && (mask & ~tail_mask)) || at[r] + __builtin_popcount(mask) > row_offsets[r0 + r + 1]) {
        bad_row = r0 + r;
        bad_column = w * kBitmapWordBits;
        return false;
      }
      _mm_prefetch(static_cast<const char*>(values) + at[r] * kValueBytes + kValuePrefetchBytes, _MM_HINT_T0);
      _mm512_store_ps(expanded[r], expand_values<kFloat32>(values, at[r], mask));
      at[r] += __builtin_popcount(mask);
    }
    const float* in = x + w * kBitmapWordBits * ldx;
    const int64_t columns = last_word ? tail : kBitmapWordBits;  // rows of X that exist
    // The sums in a block-local array, which the compiler keeps in registers (the function-wide
    // one it spilled on every step: __m512 may alias the float loads of `expanded`).
    __m512 sums[R];
    for (int r = 0; r < R; ++r) sums[r] = acc[r];
    for (int64_t j = 0; j < columns; ++j) {
      const __m512 xv = _mm512_maskz_loadu_ps(lanes, in + j * ldx);
      for (int r = 0; r < R; ++r) sums[r] = _mm512_fmadd_ps(_mm512_set1_ps(expanded[r][j]), xv, sums[r]);
    }
    for (int r = 0; r < R; ++r) acc[r] = sums[r];
  }
  for (int r = 0; r < R; ++r) {
    if (at[r] != row_offsets[r0 + r + 1]) {
      bad_row = r0 + r;
      bad_column = 0;
      return false;
    }
    _mm512_mask_storeu_ps(y + (r0 + r) * ldy, lanes, activate(acc[r], activation));
  }
  return true;
}

// Where the expanded path runs: at least this many nonzeros per 16 columns (about 62% sparsity).
constexpr int64_t kExpandedMinNonzerosPerWord = 6;
constexpr int kExpandedRows = 16;  // 16 accumulators of the 32 registers

template <bool kFloat32>
Status expanded_spmm(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t k, const float* x,
                     int64_t ldx, int64_t cols_x, const float* bias, Activation activation, float* y, int64_t ldy,
                     int64_t row_begin, int64_t row_end) {
  const __mmask16 lanes = __mmask16(cols_x >= 16 ? 0xffffu : (1u << cols_x) - 1);
  int64_t bad_row = 0, bad_column = 0;
  int64_t r = row_begin;
  for (; r + kExpandedRows <= row_end; r += kExpandedRows) {
    if (!expanded_rows<kExpandedRows, kFloat32>(values, bitmap, row_offsets, k, x, ldx, lanes, bias, activation, y, ldy,
                                                r, bad_row, bad_column)) {
      return Status{StatusCode::kCorruptMeta, bad_row, bad_column};
    }
  }
  for (; r < row_end; ++r) {
    if (!expanded_rows<1, kFloat32>(values, bitmap, row_offsets, k, x, ldx, lanes, bias, activation, y, ldy, r, bad_row,
                                    bad_column)) {
      return Status{StatusCode::kCorruptMeta, bad_row, bad_column};
    }
  }
  return Status{};
}

}  // namespace

Status bitmap_gemv_avx512(const BitmapWeightView& w, const GemvArgs& a, RowRange range) {
  const void* values = w.values;
  const uint16_t* bitmap = w.bitmap;
  const int64_t* row_offsets = w.row_offsets;
  const int64_t rows = w.rows, k = w.cols, row_begin = range.begin, row_end = range.end;
  const float *x = a.x, *bias = a.bias;
  float* y = a.y;
  const bool f32 = w.value_type == ValueType::kFloat32;
  switch (a.batch) {
#define PRUNEKIT_GEMV_CASE(B)                                                                             \
  case B:                                                                                                 \
    return f32 ? gemv_rows<B, true>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end) \
               : gemv_rows<B, false>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 1:
      return f32 ? gemv_row_pairs<true>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end)
                 : gemv_row_pairs<false>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
      PRUNEKIT_GEMV_CASE(2)
      PRUNEKIT_GEMV_CASE(3)
    default: PRUNEKIT_GEMV_CASE(4)
#undef PRUNEKIT_GEMV_CASE
  }
}

Status bitmap_spmm_avx512(const BitmapWeightView& w, const SpmmArgs& a, RowRange range) {
  const void* values = w.values;
  const uint16_t* bitmap = w.bitmap;
  const int64_t* row_offsets = w.row_offsets;
  const int64_t k = w.cols, row_begin = range.begin, row_end = range.end;
  const int64_t nonzeros = row_offsets[row_end] - row_offsets[row_begin];
  const int64_t row_words = std::max<int64_t>(1, (row_end - row_begin) * bitmap_words(k));
  if (a.cols_x >= 1 && a.cols_x <= 16 && nonzeros >= kExpandedMinNonzerosPerWord * row_words) {
    return w.value_type == ValueType::kFloat32
               ? expanded_spmm<true>(values, bitmap, row_offsets, k, a.x, a.ldx, a.cols_x, a.bias, a.activation, a.y,
                                     a.ldy, row_begin, row_end)
               : expanded_spmm<false>(values, bitmap, row_offsets, k, a.x, a.ldx, a.cols_x, a.bias, a.activation, a.y,
                                      a.ldy, row_begin, row_end);
  }
  const SpmmCall call{values, w.value_type, row_offsets, k,     a.x,       a.ldx,  a.cols_x,
                      a.bias, a.activation, a.y,         a.ldy, row_begin, row_end};
  BitmapRows source(bitmap, k);
  return spmm_rows(call, source);
}

}  // namespace prunekit::cpu
