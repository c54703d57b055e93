// Bitmap sparse linear / 1x1 conv kernels for AVX2 + FMA.
// GEMV (batch <= 4): AVX2 has no expand, so each byte of the bitmap (8 columns) picks an in-lane
// permutation and a lane mask from 256-entry tables; the byte's packed values (plain loads; masked
// loads are slow on Zen) are permuted into their columns and multiplied with x, so the weight
// streams once. Rows of a 2:4 weight take a faster fixed-offset path (semi24_row).
// SpMM: the shared vector-extension kernel (spmm_generic_impl.h).
#include <immintrin.h>

#include <climits>

#define PRUNEKIT_VECTOR_BYTES 32
#include "prunekit/bf16_x86.h"
#include "spmm_generic_impl.h"

namespace prunekit::cpu {
namespace {

constexpr int64_t kValuePrefetchBytes = 8192;

// Per byte of the bitmap (8 columns, two 128-bit lanes of 4): lane l of half h takes the packed
// value of its rank among the half's marked columns (in-lane vpermilps: one fast uop, where the
// cross-lane vpermps is several on Zen), then unmarked lanes are cleared with `keep`.
struct ByteTables {
  alignas(32) int32_t rank[256][8];
  alignas(32) int32_t keep[256][8];
  ByteTables() {
    for (int bits = 0; bits < 256; ++bits) {
      for (int half = 0; half < 2; ++half) {
        int rank_in_half = 0;
        for (int lane = 4 * half; lane < 4 * half + 4; ++lane) {
          const bool marked = (bits >> lane) & 1;
          rank[bits][lane] = marked ? rank_in_half++ : 0;
          keep[bits][lane] = marked ? -1 : 0;
        }
      }
    }
  }
};
const ByteTables kByte;
// loadu(kFirstLanes + 8 - n): the first n lanes set.
alignas(32) constexpr int32_t kFirstLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

inline __m256i first_lanes(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kFirstLanes + 8 - n)); }

// The byte's packed values (low half at values[0..], high half popcount(bits & 15) later) as
// [4 low | 4 high] fp32 lanes, 4 values read whole per half: fast plain loads whose extra lanes
// the caller clears. `v` must have 8 readable elements.
template <ValueType T>
inline __m256 load_halves(const void* v, int low_count) {
  if constexpr (T == ValueType::kFloat32) {
    const float* f = static_cast<const float*>(v);
    return _mm256_loadu2_m128(f + low_count, f);
  }
  const uint16_t* h = static_cast<const uint16_t*>(v);
  const __m128i halves = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(h)),
                                            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(h + low_count)));
  return widen_bf16x8(halves);
}

// Near the end of the values buffer a whole-half read would pass it: copy the byte's values to
// zeroed scratch first (taken for the last few bytes of the whole weight only).
template <ValueType T>
__attribute__((noinline, cold)) __m256 load_halves_at_end(const void* values, int64_t offset, uint32_t bits) {
  alignas(32) uint32_t scratch[8] = {};
  constexpr size_t size = T == ValueType::kFloat32 ? 4 : 2;
  std::memcpy(scratch, static_cast<const char*>(values) + offset * size, size * __builtin_popcount(bits));
  return load_halves<T>(scratch, __builtin_popcount(bits & 15));
}

// The weights of one byte's 8 columns, zero where unmarked; `end` is the size of values.
template <ValueType T>
inline __m256 expand_byte(const void* values, int64_t offset, int64_t end, uint32_t bits) {
  constexpr size_t size = T == ValueType::kFloat32 ? 4 : 2;
  const __m256 packed =
      __builtin_expect(offset + 8 <= end, 1)
          ? load_halves<T>(static_cast<const char*>(values) + offset * size, __builtin_popcount(bits & 15))
          : load_halves_at_end<T>(values, offset, bits);
  const __m256i rank = _mm256_load_si256(reinterpret_cast<const __m256i*>(kByte.rank[bits]));
  const __m256 keep = _mm256_load_ps(reinterpret_cast<const float*>(kByte.keep[bits]));
  return _mm256_and_ps(_mm256_permutevar_ps(packed, rank), keep);
}

// y[b][r] = sum of `sums[b]`'s lanes + bias[r].
template <int B>
inline void store_row_sums(const __m256* sums, const float* bias, float* y, int64_t rows, int64_t r) {
  for (int b = 0; b < B; ++b) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(sums[b]), _mm256_extractf128_ps(sums[b], 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    y[b * rows + r] = _mm_cvtss_f32(half) + (bias ? bias[r] : 0.0f);
  }
}

// Rows with two marked columns in every group of four (2:4 weights) have exactly 8 values per
// 16-column word, so no popcounts and no offset chain: the word's values are one load, and x is
// brought to them instead of the reverse. pairs_low[byte] moves the two marked x of group 0 (the
// byte's low nibble) to lanes 0-1 and of group 1 to lanes 4-5, pairs_high those of groups 2 and 3
// to lanes 2-3 and 6-7 (in-lane vpermilps, which reads only bits 0-1 of each control lane); one
// blend gives x as [g0 g0 g2 g2 | g1 g1 g3 g3], the values' order after a 64-bit-pair permute.
// A byte that is not two-and-two has the sign bit set in every control lane, so OR-ing the
// controls of a row tells whether it was a 2:4 row (else the general kernel redoes it).
struct Semi24Tables {
  alignas(32) int32_t pairs_low[256][8];
  alignas(32) int32_t pairs_high[256][8];
  Semi24Tables() {
    for (int bits = 0; bits < 256; ++bits) {
      const bool valid = __builtin_popcount(bits & 15) == 2 && __builtin_popcount(bits >> 4) == 2;
      const int32_t flag = valid ? 0 : INT32_MIN;
      for (int half = 0; half < 2; ++half) {
        int marked[2] = {0, 0}, count = 0;
        for (int lane = 0; lane < 4; ++lane) {
          if ((bits >> (4 * half + lane)) & 1 && count < 2) marked[count++] = lane;
        }
        for (int lane = 0; lane < 4; ++lane) {
          pairs_low[bits][4 * half + lane] = (lane < 2 ? marked[lane] : 0) | flag;
          pairs_high[bits][4 * half + lane] = (lane >= 2 ? marked[lane - 2] : 0) | flag;
        }
      }
    }
  }
};
const Semi24Tables kSemi24;

// A 16-column word's 8 values as fp32 in the order [0 1 4 5 | 2 3 6 7].
template <ValueType T>
inline __m256 load_semi24_values(const void* values, int64_t offset) {
  if constexpr (T == ValueType::kFloat32) {
    const __m256 v = _mm256_loadu_ps(static_cast<const float*>(values) + offset);
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
  }
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(values) + offset));
  return widen_bf16x8(_mm_shuffle_epi32(h, 0xD8));
}

// Row r as a 2:4 row (k % 16 == 0 and exactly k / 2 values, checked by the caller); false, with
// nothing written, when some group of four does not mark exactly two columns.
template <int B, ValueType T>
bool semi24_row(const void* values, const uint16_t* bm, int64_t offset, int64_t k, const float* x, const float* bias,
                float* y, int64_t rows, int64_t r) {
  __m256 even[B], odd[B];
  for (int b = 0; b < B; ++b) even[b] = odd[b] = _mm256_setzero_ps();
  __m256i bad = _mm256_setzero_si256();
  auto word_dot = [&](int64_t w, __m256* sums) {
    const uint32_t word = bm[w];
    const __m256i low = _mm256_load_si256(reinterpret_cast<const __m256i*>(kSemi24.pairs_low[word & 0xff]));
    const __m256i high = _mm256_load_si256(reinterpret_cast<const __m256i*>(kSemi24.pairs_high[word >> 8]));
    bad = _mm256_or_si256(bad, _mm256_or_si256(low, high));
    const __m256 v = load_semi24_values<T>(values, offset + 8 * w);
    for (int b = 0; b < B; ++b) {
      const float* xw = x + b * k + 16 * w;
      const __m256 picked = _mm256_blend_ps(_mm256_permutevar_ps(_mm256_loadu_ps(xw), low),
                                            _mm256_permutevar_ps(_mm256_loadu_ps(xw + 8), high), 0xCC);
      sums[b] = _mm256_fmadd_ps(v, picked, sums[b]);
    }
  };
  const int64_t words = k / kBitmapWordBits;
  int64_t w = 0;
  for (; w + 2 <= words; w += 2) {
    word_dot(w, even);
    word_dot(w + 1, odd);
  }
  if (w < words) word_dot(w, even);
  if (_mm256_movemask_ps(_mm256_castsi256_ps(bad))) return false;
  for (int b = 0; b < B; ++b) even[b] = _mm256_add_ps(even[b], odd[b]);
  store_row_sums<B>(even, bias, y, rows, r);
  return true;
}

// One row's dot products with B batch rows of x, walked two bitmap words per step: the state the
// one-row and the two-row GEMVs share. Even and odd words accumulate apart: four FMA chains in
// flight instead of two.
template <int B, ValueType T>
struct RowDot {
  static constexpr int kValueShift = T == ValueType::kFloat32 ? 2 : 1;
  const void* values;
  const uint16_t* bm;
  const float* x;
  int64_t k, offset, limit, end;
  bool corrupt = false;
  __m256 low0[B], high0[B], low1[B], high1[B];

  [[gnu::always_inline]] RowDot(const void* v, const uint16_t* bitmap_row, const float* xs, int64_t cols,
                                int64_t row_offset, int64_t row_limit, int64_t values_end)
      : values(v), bm(bitmap_row), x(xs), k(cols), offset(row_offset), limit(row_limit), end(values_end) {
    for (int b = 0; b < B; ++b) low0[b] = high0[b] = low1[b] = high1[b] = _mm256_setzero_ps();
  }

  [[gnu::always_inline]] void word(int64_t w, __m256* low, __m256* high) {
    const int64_t full_words = k / kBitmapWordBits;
    const uint32_t tail_bits = uint32_t(k % kBitmapWordBits);
    const uint32_t word = bm[w];
    const bool tail = w == full_words;
    if ((tail && (word & ~((1u << tail_bits) - 1))) || offset + __builtin_popcount(word) > limit) {
      corrupt = true;
      return;
    }
    const __m256 w_low = expand_byte<T>(values, offset, end, word & 0xff);
    offset += __builtin_popcount(word & 0xff);
    const __m256 w_high = expand_byte<T>(values, offset, end, word >> 8);
    offset += __builtin_popcount(word >> 8);
    const int64_t c = w * kBitmapWordBits;
    if (!tail) {
      for (int b = 0; b < B; ++b) {
        low[b] = _mm256_fmadd_ps(w_low, _mm256_loadu_ps(x + b * k + c), low[b]);
        high[b] = _mm256_fmadd_ps(w_high, _mm256_loadu_ps(x + b * k + c + 8), high[b]);
      }
    } else {  // columns past k: x is not read there (the bitmap marks none of them)
      const int low_lanes = tail_bits < 8 ? int(tail_bits) : 8;
      const __m256i low_valid = first_lanes(low_lanes), high_valid = first_lanes(int(tail_bits) - low_lanes);
      for (int b = 0; b < B; ++b) {
        low[b] = _mm256_fmadd_ps(w_low, _mm256_maskload_ps(x + b * k + c, low_valid), low[b]);
        high[b] = _mm256_fmadd_ps(w_high, _mm256_maskload_ps(x + b * k + c + 8, high_valid), high[b]);
      }
    }
  }

  // Words w and w + 1 (w + 1 < bitmap_words(k)).
  [[gnu::always_inline]] void step(int64_t w) {
    // Far ahead of the data-dependent value reads (see bitmap-avx512.cc).
    if ((w & 3) == 0) __builtin_prefetch(static_cast<const char*>(values) + (offset << kValueShift) + kPrefetchBytes);
    word(w, low0, high0);
    if (!corrupt) word(w + 1, low1, high1);
  }

  // The last word where the row has an odd number, then the sums into y; false if corrupt.
  [[gnu::always_inline]] bool finish(int64_t w, const float* bias, float* y, int64_t rows, int64_t r) {
    if (w < bitmap_words(k) && !corrupt) word(w, low0, high0);
    if (corrupt || offset != limit) return false;
    __m256 sums[B];
    for (int b = 0; b < B; ++b)
      sums[b] = _mm256_add_ps(_mm256_add_ps(low0[b], high0[b]), _mm256_add_ps(low1[b], high1[b]));
    store_row_sums<B>(sums, bias, y, rows, r);
    return true;
  }

  static constexpr int64_t kPrefetchBytes = kValuePrefetchBytes;
};

template <int B, ValueType T>
Status gemv_rows(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                 const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const int64_t end = row_offsets[rows];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint16_t* bm = bitmap + r * words;
    const int64_t offset = row_offsets[r], limit = row_offsets[r + 1];
    if (k % kBitmapWordBits == 0 && limit - offset == k / 2 &&
        semi24_row<B, T>(values, bm, offset, k, x, bias, y, rows, r)) {
      continue;
    }
    RowDot<B, T> row(values, bm, x, k, offset, limit, end);
    int64_t w = 0;
    for (; w + 2 <= words && !row.corrupt; w += 2) row.step(w);
    if (!row.finish(w, bias, y, rows, r)) return Status{StatusCode::kCorruptMeta, r, 0};
  }
  return Status{};
}

// Batch 1: rows from the two halves of [row_begin, row_end) in lockstep, two value streams far
// apart in flight instead of one (see bitmap-avx512.cc). 2:4 rows go one at a time through their
// fixed-offset path, which reads x twice per value and gains nothing from a second stream. A
// corrupt pair is walked again row by row, so that the status names the first corrupt row.
template <ValueType T>
Status gemv_row_pairs(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                      const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const int64_t end = row_offsets[rows];
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t a = row_begin; a < row_begin + half; ++a) {
    const int64_t b = a + half;
    const bool semi24 = k % kBitmapWordBits == 0 && row_offsets[a + 1] - row_offsets[a] == k / 2 &&
                        row_offsets[b + 1] - row_offsets[b] == k / 2;
    if (semi24) {
      if (!gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, a, a + 1).ok() ||
          !gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, b, b + 1).ok()) {
        return gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
      }
      continue;
    }
    RowDot<1, T> row_a(values, bitmap + a * words, x, k, row_offsets[a], row_offsets[a + 1], end);
    RowDot<1, T> row_b(values, bitmap + b * words, x, k, row_offsets[b], row_offsets[b + 1], end);
    int64_t w = 0;
    for (; w + 2 <= words && !(row_a.corrupt || row_b.corrupt); w += 2) {
      row_a.step(w);
      row_b.step(w);
    }
    if (!row_a.finish(w, bias, y, rows, a) || !row_b.finish(w, bias, y, rows, b)) {
      return gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    }
  }
  // The odd row out.
  return gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin + 2 * half, row_end);
}

template <ValueType T>
Status gemv_batch(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                  const float* x, int64_t batch, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  switch (batch) {
    case 1: return gemv_row_pairs<T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 2: return gemv_rows<2, T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3, T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4, T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

}  // namespace

Status bitmap_gemv_avx2(const BitmapWeightView& w, const GemvArgs& a, RowRange range) {
  if (w.value_type == ValueType::kFloat32) {
    return gemv_batch<ValueType::kFloat32>(w.values, w.bitmap, w.row_offsets, w.rows, w.cols, a.x, a.batch, a.bias, a.y,
                                           range.begin, range.end);
  }
  return gemv_batch<ValueType::kBFloat16>(w.values, w.bitmap, w.row_offsets, w.rows, w.cols, a.x, a.batch, a.bias, a.y,
                                          range.begin, range.end);
}

Status bitmap_spmm_avx2(const BitmapWeightView& w, const SpmmArgs& a, RowRange range) {
  return bitmap_spmm_impl(w, a, range);
}

}  // namespace prunekit::cpu
