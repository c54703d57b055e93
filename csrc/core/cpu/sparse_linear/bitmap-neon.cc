// Bitmap sparse linear / 1x1 conv kernels for AArch64 NEON.
// GEMV (batch <= 4): each nibble of the bitmap (4 columns) picks a byte shuffle from a 16-entry
// table; one table lookup (tbl, which yields 0 for out-of-range indices) moves the nibble's
// packed values into their columns with zeros elsewhere, so the weight streams once.
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

// The weights of one nibble's 4 columns, zero where unmarked. Reads exactly popcount(bits) values.
inline float32x4_t expand_nibble(const void* values, ValueType type, int64_t offset, uint32_t bits) {
  const int count = __builtin_popcount(bits);
  float32x4_t packed;
  if (type == ValueType::kFloat32) {
    float lanes[4] = {};
    std::memcpy(lanes, static_cast<const float*>(values) + offset, sizeof(float) * count);
    packed = vld1q_f32(lanes);
  } else {
    uint16_t halves[4] = {};
    std::memcpy(halves, static_cast<const uint16_t*>(values) + offset, sizeof(uint16_t) * count);
    packed = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(halves), 16));
  }
  return vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(packed), vld1q_u8(kShuffle.bytes[bits])));
}

template <int B>
Status gemv_rows(const void* values, ValueType type, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows,
                 int64_t k, const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const int64_t full_words = k / kBitmapWordBits;
  const uint32_t tail_mask = (1u << (k % kBitmapWordBits)) - 1;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint16_t* bm = bitmap + r * words;
    int64_t offset = row_offsets[r];
    const int64_t limit = row_offsets[r + 1];
    float32x4_t acc[B];
    for (int b = 0; b < B; ++b) acc[b] = vdupq_n_f32(0.0f);
    for (int64_t w = 0; w < words; ++w) {
      const uint32_t word = bm[w];
      const bool tail = w == full_words;
      if ((tail && (word & ~tail_mask)) || offset + __builtin_popcount(word) > limit) {
        return Status{StatusCode::kCorruptMeta, r, w * kBitmapWordBits};
      }
      for (int nibble = 0; nibble < 4; ++nibble) {
        const uint32_t bits = (word >> (4 * nibble)) & 0xf;
        if (bits == 0) continue;
        const float32x4_t weights = expand_nibble(values, type, offset, bits);
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
          acc[b] = vfmaq_f32(acc[b], weights, in);
        }
      }
    }
    if (offset != limit) return Status{StatusCode::kCorruptMeta, r, 0};
    for (int b = 0; b < B; ++b) y[b * rows + r] = vaddvq_f32(acc[b]) + (bias ? bias[r] : 0.0f);
  }
  return Status{};
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
    case 1: return gemv_rows<1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 2: return gemv_rows<2>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

Status bitmap_spmm_neon(const BitmapWeightView& w, const SpmmArgs& a, RowRange range) {
  return bitmap_spmm_impl(w, a, range);
}

}  // namespace prunekit::cpu
