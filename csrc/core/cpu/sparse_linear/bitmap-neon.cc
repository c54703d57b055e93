// Bitmap sparse linear / 1x1 conv kernels for AArch64 NEON.
// GEMV (batch <= 4): each nibble of the bitmap (4 columns) picks a byte shuffle from a 16-entry
// table; one table lookup (tbl, which yields 0 for out-of-range indices) moves the nibble's
// packed values into their columns with zeros elsewhere, so the weight streams once. At batch 1
// two rows walk in lockstep; rows of a 2:4 weight take a fixed-offset path (semi24_row).
// SpMM: the shared vector-extension kernel (spmm_generic_impl.h).
#include <arm_neon.h>

#define PRUNEKIT_VECTOR_BYTES 16
#include "spmm_generic_impl.h"

namespace prunekit::cpu {
namespace {

// shuffle[bits]: bytes of lane l = bytes of packed value rank(l) for a marked lane, 0xff (-> 0)
// for an unmarked one.
struct ShuffleTable {
  alignas(16) uint8_t bytes[16][16];
  ShuffleTable() {
    for (int bits = 0; bits < 16; ++bits) {
      int rank = 0;
      for (int lane = 0; lane < 4; ++lane) {
        const bool marked = (bits >> lane) & 1;
        for (int byte = 0; byte < 4; ++byte) bytes[bits][4 * lane + byte] = marked ? uint8_t(4 * rank + byte) : 0xff;
        rank += marked;
      }
    }
  }
};
const ShuffleTable kShuffle;

// Software prefetch this far ahead of the data-dependent value reads (as on x86: the hardware
// prefetchers follow a stream whose steps depend on popcounts too short a distance ahead).
constexpr int64_t kValuePrefetchBytes = 4096;

// The packed values at `offset` as fp32 lanes, 4 read whole (the caller clears extra lanes).
inline float32x4_t load_four(const void* values, ValueType type, int64_t offset) {
  if (type == ValueType::kFloat32) return vld1q_f32(static_cast<const float*>(values) + offset);
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(static_cast<const uint16_t*>(values) + offset), 16));
}

// The weights of one nibble's 4 columns, zero where unmarked. Reads whole vectors where 4 values
// remain before `end` (the size of values), else exactly popcount(bits) values.
inline float32x4_t expand_nibble(const void* values, ValueType type, int64_t offset, int64_t end, uint32_t bits) {
  float32x4_t packed;
  if (__builtin_expect(offset + 4 <= end, 1)) {
    packed = load_four(values, type, offset);
  } else {
    const int count = __builtin_popcount(bits);
    if (type == ValueType::kFloat32) {
      float lanes[4] = {};
      std::memcpy(lanes, static_cast<const float*>(values) + offset, sizeof(float) * count);
      packed = vld1q_f32(lanes);
    } else {
      uint16_t halves[4] = {};
      std::memcpy(halves, static_cast<const uint16_t*>(values) + offset, sizeof(uint16_t) * count);
      packed = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(halves), 16));
    }
  }
  return vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(packed), vld1q_u8(kShuffle.bytes[bits])));
}

// Rows with two marked columns in every group of four (2:4 weights) have 4 values per byte of the
// bitmap at fixed offsets: x is brought to the values instead (one two-register table lookup picks
// the byte's four marked x in the values' order), with no popcounts and no offset chain.
// pick[byte]: the bytes of x lanes (two vectors, 32 bytes) of the marked columns in order.
struct Semi24Table {
  alignas(16) uint8_t pick[256][16];
  Semi24Table() {
    for (int bits = 0; bits < 256; ++bits) {
      int lane = 0;
      for (int column = 0; column < 8 && lane < 4; ++column) {
        if (!((bits >> column) & 1)) continue;
        for (int byte = 0; byte < 4; ++byte) pick[bits][4 * lane + byte] = uint8_t(4 * column + byte);
        ++lane;
      }
      for (; lane < 4; ++lane)
        for (int byte = 0; byte < 4; ++byte) pick[bits][4 * lane + byte] = 0xff;
    }
  }
};
const Semi24Table kSemi24;

// Row r as a 2:4 row (k % 16 == 0 and exactly k / 2 values, checked by the caller); false, with
// nothing written, when some group of four does not mark exactly two columns.
template <int B>
bool semi24_row(const void* values, ValueType type, const uint16_t* bm, int64_t offset, int64_t k, const float* x,
                const float* bias, float* y, int64_t rows, int64_t r) {
  const int64_t words = k / kBitmapWordBits;
  if (!bitmap_row_is_semi24(bm, words)) return false;
  float32x4_t low[B], high[B];
  for (int b = 0; b < B; ++b) low[b] = high[b] = vdupq_n_f32(0.0f);
  for (int64_t w = 0; w < words; ++w) {
    if ((w & 7) == 0) {
      __builtin_prefetch(static_cast<const char*>(values) + (offset + 8 * w) * (type == ValueType::kFloat32 ? 4 : 2) +
                         kValuePrefetchBytes);
    }
    const uint32_t word = bm[w];
    const uint8x16_t pick_low = vld1q_u8(kSemi24.pick[word & 0xff]);
    const uint8x16_t pick_high = vld1q_u8(kSemi24.pick[word >> 8]);
    float32x4_t v_low, v_high;
    if (type == ValueType::kFloat32) {
      v_low = vld1q_f32(static_cast<const float*>(values) + offset + 8 * w);
      v_high = vld1q_f32(static_cast<const float*>(values) + offset + 8 * w + 4);
    } else {
      const uint16x8_t h = vld1q_u16(static_cast<const uint16_t*>(values) + offset + 8 * w);
      v_low = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
      v_high = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
    }
    for (int b = 0; b < B; ++b) {
      const float* xw = x + b * k + w * kBitmapWordBits;
      const uint8x16x2_t x_low = {{vreinterpretq_u8_f32(vld1q_f32(xw)), vreinterpretq_u8_f32(vld1q_f32(xw + 4))}};
      const uint8x16x2_t x_high = {{vreinterpretq_u8_f32(vld1q_f32(xw + 8)), vreinterpretq_u8_f32(vld1q_f32(xw + 12))}};
      low[b] = vfmaq_f32(low[b], v_low, vreinterpretq_f32_u8(vqtbl2q_u8(x_low, pick_low)));
      high[b] = vfmaq_f32(high[b], v_high, vreinterpretq_f32_u8(vqtbl2q_u8(x_high, pick_high)));
    }
  }
  for (int b = 0; b < B; ++b) y[b * rows + r] = vaddvq_f32(vaddq_f32(low[b], high[b])) + (bias ? bias[r] : 0.0f);
  return true;
}

// One row's dot products with B batch rows of x: the state the one-row and the two-row GEMVs
// share. Each nibble position accumulates apart: four FMA chains in flight instead of one.
template <int B>
struct RowDot {
  const void* values;
  ValueType type;
  const uint16_t* bm;
  const float* x;
  int64_t k, offset, limit, end;
  bool corrupt = false;
  float32x4_t acc[4][B];

  RowDot(const void* v, ValueType t, const uint16_t* bitmap_row, const float* xs, int64_t cols, int64_t row_offset,
         int64_t row_limit, int64_t values_end)
      : values(v), type(t), bm(bitmap_row), x(xs), k(cols), offset(row_offset), limit(row_limit), end(values_end) {
    for (auto& position : acc)
      for (int b = 0; b < B; ++b) position[b] = vdupq_n_f32(0.0f);
  }

  // Word w; false (and `corrupt`) where it marks past k or more values than the row has.
  [[gnu::always_inline]] inline void word(int64_t w) {
    const int64_t full_words = k / kBitmapWordBits;
    const uint32_t tail_mask = (1u << (k % kBitmapWordBits)) - 1;
    const uint32_t bits16 = bm[w];
    const bool tail = w == full_words;
    if ((tail && (bits16 & ~tail_mask)) || offset + __builtin_popcount(bits16) > limit) {
      corrupt = true;
      return;
    }
    if ((w & 3) == 0) {
      __builtin_prefetch(static_cast<const char*>(values) + offset * (type == ValueType::kFloat32 ? 4 : 2) +
                         kValuePrefetchBytes);
    }
    for (int nibble = 0; nibble < 4; ++nibble) {
      const uint32_t bits = (bits16 >> (4 * nibble)) & 0xf;
      if (bits == 0) continue;
      const float32x4_t weights = expand_nibble(values, type, offset, end, bits);
      offset += __builtin_popcount(bits);
      const int64_t c = w * kBitmapWordBits + 4 * nibble;
      for (int b = 0; b < B; ++b) {
        float32x4_t in;
        if (c + 4 <= k) {
          in = vld1q_f32(x + b * k + c);
        } else {  // columns past k: x is not read there (the bitmap marks none of them)
          float lanes[4] = {};
          std::memcpy(lanes, x + b * k + c, sizeof(float) * (k - c));
          in = vld1q_f32(lanes);
        }
        acc[nibble][b] = vfmaq_f32(acc[nibble][b], weights, in);
      }
    }
  }

  // The sums into y; false if the row was corrupt or does not end at its limit.
  bool finish(const float* bias, float* y, int64_t rows, int64_t r) {
    if (corrupt || offset != limit) return false;
    for (int b = 0; b < B; ++b) {
      const float32x4_t sum = vaddq_f32(vaddq_f32(acc[0][b], acc[1][b]), vaddq_f32(acc[2][b], acc[3][b]));
      y[b * rows + r] = vaddvq_f32(sum) + (bias ? bias[r] : 0.0f);
    }
    return true;
  }
};

template <int B>
Status gemv_rows(const void* values, ValueType type, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows,
                 int64_t k, const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const int64_t end = row_offsets[rows];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint16_t* bm = bitmap + r * words;
    const int64_t offset = row_offsets[r], limit = row_offsets[r + 1];
    if (k % kBitmapWordBits == 0 && limit - offset == k / 2 &&
        semi24_row<B>(values, type, bm, offset, k, x, bias, y, rows, r)) {
      continue;
    }
    RowDot<B> row(values, type, bm, x, k, offset, limit, end);
    for (int64_t w = 0; w < words && !row.corrupt; ++w) row.word(w);
    if (!row.finish(bias, y, rows, r)) return Status{StatusCode::kCorruptMeta, r, 0};
  }
  return Status{};
}

// Batch 1: rows from the two halves of [row_begin, row_end) in lockstep, two value streams far
// apart in flight instead of one (see bitmap-avx512.cc); 2:4 rows one at a time through their
// fixed-offset path. A corrupt pair is walked again row by row, so that the status names the
// first corrupt row.
Status gemv_row_pairs(const void* values, ValueType type, const uint16_t* bitmap, const int64_t* row_offsets,
                      int64_t rows, int64_t k, const float* x, const float* bias, float* y, int64_t row_begin,
                      int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const int64_t end = row_offsets[rows];
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t a = row_begin; a < row_begin + half; ++a) {
    const int64_t b = a + half;
    const bool semi24 = k % kBitmapWordBits == 0 && row_offsets[a + 1] - row_offsets[a] == k / 2 &&
                        row_offsets[b + 1] - row_offsets[b] == k / 2;
    if (semi24) {
      if (!gemv_rows<1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, a, a + 1).ok() ||
          !gemv_rows<1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, b, b + 1).ok()) {
        return gemv_rows<1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
      }
      continue;
    }
    RowDot<1> row_a(values, type, bitmap + a * words, x, k, row_offsets[a], row_offsets[a + 1], end);
    RowDot<1> row_b(values, type, bitmap + b * words, x, k, row_offsets[b], row_offsets[b + 1], end);
    for (int64_t w = 0; w < words && !(row_a.corrupt || row_b.corrupt); ++w) {
      row_a.word(w);
      row_b.word(w);
    }
    if (!row_a.finish(bias, y, rows, a) || !row_b.finish(bias, y, rows, b)) {
      return gemv_rows<1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    }
  }
  // The odd row out.
  return gemv_rows<1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin + 2 * half, row_end);
}

}  // namespace

Status bitmap_gemv_neon(const BitmapWeightView& w, const GemvArgs& a, RowRange range) {
  const void* values = w.values;
  const ValueType type = w.value_type;
  const uint16_t* bitmap = w.bitmap;
  const int64_t* row_offsets = w.row_offsets;
  const int64_t rows = w.rows, k = w.cols, row_begin = range.begin, row_end = range.end;
  const float *x = a.x, *bias = a.bias;
  float* y = a.y;
  switch (a.batch) {
    case 1: return gemv_row_pairs(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 2: return gemv_rows<2>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

Status bitmap_spmm_neon(const BitmapWeightView& w, const SpmmArgs& a, RowRange range) {
  return bitmap_spmm_impl(w, a, range);
}

}  // namespace prunekit::cpu
