// Bitmap sparse linear / 1x1 conv kernels for AVX2 + FMA.
// GEMV (batch <= 4): AVX2 has no expand, so each byte of the bitmap (8 columns, two 128-bit lanes
// of 4) loads the 16 bytes from each half's first packed value and one in-lane byte shuffle
// (vpshufb, a 256-entry table per value type) moves every marked column's value into its lane and
// zeroes the others; bf16 values land in the high half of their fp32 lane, so the shuffle widens
// them too. The weight streams once; rows go in steps of four words with no per-word check (as the
// AVX-512 GEMV does). Rows of a 2:4 weight take a faster fixed-offset path (semi24_row).
// SpMM: the shared vector-extension kernel (spmm_generic_impl.h).
#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cstring>

#define PRUNEKIT_VECTOR_BYTES 32
#include "prunekit/bf16_x86.h"
#include "spmm_generic_impl.h"

namespace prunekit::cpu {
namespace {

// The value stream's next reads are data dependent: prefetch this far ahead in software, the first
// and the last line of each step's values (see bitmap-avx512.cc).
constexpr int64_t kValuePrefetchBytes = 8192;

template <ValueType T>
constexpr int64_t kValueBytes = T == ValueType::kFloat32 ? 4 : 2;
// A byte's expansion reads 16 bytes from each half's first value: this many values from the
// second half's first one.
template <ValueType T>
constexpr int64_t kReadValues = 16 / kValueBytes<T>;

// Per byte of the bitmap, for the byte shuffle: lane l of half h takes the packed value of its rank
// among the half's marked columns, counted from the first value the half's 16 bytes start at;
// unmarked lanes (and the low half of a bf16 lane) take index 0x80, which the shuffle zeroes.
// `one_load`: both halves hold the same 16 bytes from the byte's first value (the 2:4 path), so
// the high half's ranks follow the low half's marked columns (entries of bytes that are not two
// and two are never used); else each half starts at its own.
struct ByteShuffles {
  alignas(32) uint8_t f32[256][32];
  alignas(32) uint8_t bf16[256][32];
  explicit ByteShuffles(bool one_load) {
    for (int bits = 0; bits < 256; ++bits) {
      for (int half = 0; half < 2; ++half) {
        int rank = one_load && half ? __builtin_popcount(bits & 15) : 0;
        for (int lane = 0; lane < 4; ++lane) {
          const bool marked = (bits >> (4 * half + lane)) & 1;
          for (int byte = 0; byte < 4; ++byte) {
            const int at = 16 * half + 4 * lane + byte;
            f32[bits][at] = marked ? uint8_t(4 * rank + byte) : 0x80;
            bf16[bits][at] = marked && byte >= 2 ? uint8_t(2 * rank + byte - 2) : 0x80;
          }
          rank += marked;
        }
      }
    }
  }
};
const ByteShuffles kShuffle(false);
// loadu(kFirstLanes + 8 - n): the first n lanes set.
alignas(32) constexpr int32_t kFirstLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

inline __m256i first_lanes(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kFirstLanes + 8 - n)); }

// The weights of one byte's 8 columns, zero where unmarked, from the byte's first value `v`:
// reads kReadValues<T> values from the second half's first one.
template <ValueType T>
inline __m256 expand_byte(const char* v, uint32_t bits) {
  const char* high = v + __builtin_popcount(bits & 15) * kValueBytes<T>;
  const __m256i packed =
      _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(high), reinterpret_cast<const __m128i*>(v));
  const uint8_t* shuffle = T == ValueType::kFloat32 ? kShuffle.f32[bits] : kShuffle.bf16[bits];
  return _mm256_castsi256_ps(_mm256_shuffle_epi8(packed, _mm256_load_si256(reinterpret_cast<const __m256i*>(shuffle))));
}

// Near the end of the values buffer the whole-half reads would pass it: copy the byte's values to
// zeroed scratch first (taken for the last few bytes of the whole weight only).
template <ValueType T>
__attribute__((noinline, cold)) __m256 expand_byte_at_end(const void* values, int64_t offset, uint32_t bits) {
  alignas(32) char scratch[48] = {};
  std::memcpy(scratch, static_cast<const char*>(values) + offset * kValueBytes<T>,
              kValueBytes<T> * __builtin_popcount(bits));
  return expand_byte<T>(scratch, bits);
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

// Rows with two marked columns in every group of four (2:4 weights) have exactly 4 values per
// byte of the bitmap, so no popcounts and no offset chain: each byte broadcasts its 4 values into
// both 128-bit lanes and one byte shuffle places them (group 0 in lane 0, group 1 in lane 1) and
// zeroes the rest, widening bf16 as the general expansion does.
const ByteShuffles kSemi24(true);

// Row r as a 2:4 row (k % 16 == 0 and exactly k / 2 values, checked by the caller); false, with
// nothing written, at the first group of four that does not mark exactly two columns (checked
// four words at a time as the row goes: a row of an unstructured weight that keeps exactly half its
// columns, as Wanda at 50% does, costs a step or two).
template <int B, ValueType T>
bool semi24_row(const void* values, const uint16_t* bm, int64_t offset, int64_t k, const float* x, const float* bias,
                float* y, int64_t rows, int64_t r) {
  constexpr int kChains = B == 1 ? 4 : 2;
  __m256 acc[kChains][B];
  for (int c = 0; c < kChains; ++c)
    for (int b = 0; b < B; ++b) acc[c][b] = _mm256_setzero_ps();
  const char* v = static_cast<const char*>(values) + offset * kValueBytes<T>;
  auto byte_dot = [&](int64_t i, uint32_t bits, __m256* sums) {
    const uint8_t* table = T == ValueType::kFloat32 ? kSemi24.f32[bits] : kSemi24.bf16[bits];
    const __m256i shuffle = _mm256_load_si256(reinterpret_cast<const __m256i*>(table));
    const char* four = v + 4 * i * kValueBytes<T>;
    __m256i packed;
    if constexpr (T == ValueType::kFloat32) {
      packed = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(four)));
    } else {
      int64_t bits64;
      std::memcpy(&bits64, four, sizeof(bits64));
      packed = _mm256_set1_epi64x(bits64);
    }
    const __m256 weights = _mm256_castsi256_ps(_mm256_shuffle_epi8(packed, shuffle));
    for (int b = 0; b < B; ++b) sums[b] = _mm256_fmadd_ps(weights, _mm256_loadu_ps(x + b * k + 8 * i), sums[b]);
  };
  const int64_t words = k / kBitmapWordBits;
  int64_t w = 0;
  for (; w + 4 <= words; w += 4) {
    uint64_t four;
    std::memcpy(&four, bm + w, sizeof(four));
    if (nibble_popcounts(four) != kTwoInEachNibble) return false;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) byte_dot(2 * w + j, uint32_t(four >> (8 * j)) & 0xff, acc[j % kChains]);
  }
  for (; w < words; ++w) {
    if (nibble_popcounts(bm[w]) != (kTwoInEachNibble & 0xffffu)) return false;
    byte_dot(2 * w, bm[w] & 0xff, acc[0]);
    byte_dot(2 * w + 1, bm[w] >> 8, acc[1]);
  }
  __m256 sums[B];
  for (int b = 0; b < B; ++b) {
    sums[b] = acc[0][b];
    for (int c = 1; c < kChains; ++c) sums[b] = _mm256_add_ps(sums[b], acc[c][b]);
  }
  store_row_sums<B>(sums, bias, y, rows, r);
  return true;
}

// One row's dot products with B batch rows of x: the state the one-row and the two-row GEMVs
// share. Bytes accumulate into kChains independent FMA chains per batch row.
template <int B, ValueType T>
struct RowDot {
  static constexpr int kChains = B == 1 ? 4 : 2;
  static constexpr int kStepWords = 4;
  const char* values;
  const uint16_t* bm;
  const float* x;
  int64_t k, offset, limit, end;
  __m256 acc[kChains][B];

  [[gnu::always_inline]] RowDot(const void* v, const uint16_t* bitmap_row, const float* xs, int64_t cols,
                                int64_t row_offset, int64_t row_limit, int64_t values_end)
      : values(static_cast<const char*>(v)),
        bm(bitmap_row),
        x(xs),
        k(cols),
        offset(row_offset),
        limit(row_limit),
        end(values_end) {
    for (int c = 0; c < kChains; ++c)
      for (int b = 0; b < B; ++b) acc[c][b] = _mm256_setzero_ps();
  }

  [[gnu::always_inline]] uint64_t step_bits(int64_t w) const {
    uint64_t four;
    std::memcpy(&four, bm + w, sizeof(four));
    return four;
  }

  // Whether words [w, w + 4) (full words) can run as one step: their whole-half reads stay within
  // the values. A row that marks more values than its span reads its neighbour's and is caught at
  // its end (finish), as in the AVX-512 GEMV.
  [[gnu::always_inline]] bool fits(int64_t w) const {
    return offset + __builtin_popcountll(step_bits(w)) + kReadValues<T> <= end;
  }

  // Words [w, w + 4), with no check (fits(w) holds).
  [[gnu::always_inline]] void step(int64_t w) {
    const uint64_t four = step_bits(w);
    const int64_t total = __builtin_popcountll(four);
    // Addresses past the weight are harmless (a prefetch never faults): formed as integers.
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(values) + kValuePrefetchBytes;
    _mm_prefetch(reinterpret_cast<const char*>(ahead + offset * kValueBytes<T>), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(ahead + (offset + total) * kValueBytes<T> - 1), _MM_HINT_T0);
    int64_t at = offset;
#pragma GCC unroll 8
    for (int j = 0; j < 2 * kStepWords; ++j) {
      const uint32_t bits = uint32_t(four >> (8 * j)) & 0xff;
      const __m256 weights = expand_byte<T>(values + at * kValueBytes<T>, bits);
      at += __builtin_popcount(bits);
      const int64_t c = w * kBitmapWordBits + 8 * j;
      for (int b = 0; b < B; ++b)
        acc[j % kChains][b] = _mm256_fmadd_ps(weights, _mm256_loadu_ps(x + b * k + c), acc[j % kChains][b]);
    }
    offset += total;
  }

  // Words w.. one at a time with every check (the end of the row, near the end of the values, a
  // partial last word), then the sums into y; false if the row disagrees with its offsets.
  [[gnu::always_inline]] bool finish(int64_t w, const float* bias, float* y, int64_t rows, int64_t r) {
    const int64_t words = bitmap_words(k), full_words = k / kBitmapWordBits;
    const uint32_t tail_bits = uint32_t(k % kBitmapWordBits);
    for (; w < words; ++w) {
      const uint32_t word = bm[w];
      const bool tail = w == full_words;
      if ((tail && (word & ~((1u << tail_bits) - 1))) || offset + __builtin_popcount(word) > limit) return false;
      for (int j = 0; j < 2; ++j) {
        const uint32_t bits = (word >> (8 * j)) & 0xff;
        const int64_t high = offset + __builtin_popcount(bits & 15);
        const __m256 weights = high + kReadValues<T> <= end ? expand_byte<T>(values + offset * kValueBytes<T>, bits)
                                                            : expand_byte_at_end<T>(values, offset, bits);
        offset += __builtin_popcount(bits);
        const int64_t c = w * kBitmapWordBits + 8 * j;
        // Columns past k: x is not read there (the bitmap marks none of them).
        const __m256i valid = first_lanes(std::clamp(int(tail_bits) - 8 * j, 0, 8));
        for (int b = 0; b < B; ++b) {
          const __m256 xs = tail ? _mm256_maskload_ps(x + b * k + c, valid) : _mm256_loadu_ps(x + b * k + c);
          acc[j][b] = _mm256_fmadd_ps(weights, xs, acc[j][b]);
        }
      }
    }
    if (offset != limit) return false;
    __m256 sums[B];
    for (int b = 0; b < B; ++b) {
      sums[b] = acc[0][b];
      for (int c = 1; c < kChains; ++c) sums[b] = _mm256_add_ps(sums[b], acc[c][b]);
    }
    store_row_sums<B>(sums, bias, y, rows, r);
    return true;
  }
};

template <int B, ValueType T>
Status gemv_rows(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                 const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k), full_words = k / kBitmapWordBits;
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
    for (; w + RowDot<B, T>::kStepWords <= full_words && row.fits(w); w += RowDot<B, T>::kStepWords) row.step(w);
    if (!row.finish(w, bias, y, rows, r)) return Status{StatusCode::kCorruptMeta, r, 0};
  }
  return Status{};
}

// Batch 1: rows from the two halves of [row_begin, row_end) in lockstep, two value streams far
// apart in flight instead of one (see bitmap-avx512.cc). 2:4 rows go one at a time through their
// fixed-offset path. A corrupt pair is walked again row by row, so that the status names the first
// corrupt row.
template <ValueType T>
Status gemv_row_pairs(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                      const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k), full_words = k / kBitmapWordBits;
  const int64_t end = row_offsets[rows];
  const int64_t half = (row_end - row_begin) / 2;
  constexpr int64_t kStepWords = RowDot<1, T>::kStepWords;
  for (int64_t a = row_begin; a < row_begin + half; ++a) {
    const int64_t b = a + half;
    auto semi24 = [&](int64_t r) {
      return k % kBitmapWordBits == 0 && row_offsets[r + 1] - row_offsets[r] == k / 2 &&
             semi24_row<1, T>(values, bitmap + r * words, row_offsets[r], k, x, bias, y, rows, r);
    };
    const bool semi24_a = semi24(a), semi24_b = semi24(b);
    if (semi24_a || semi24_b) {  // the other row alone
      if ((!semi24_a && !gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, a, a + 1).ok()) ||
          (!semi24_b && !gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, b, b + 1).ok())) {
        return gemv_rows<1, T>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
      }
      continue;
    }
    RowDot<1, T> row_a(values, bitmap + a * words, x, k, row_offsets[a], row_offsets[a + 1], end);
    RowDot<1, T> row_b(values, bitmap + b * words, x, k, row_offsets[b], row_offsets[b + 1], end);
    int64_t w = 0;
    for (; w + kStepWords <= full_words && row_a.fits(w) && row_b.fits(w); w += kStepWords) {
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
