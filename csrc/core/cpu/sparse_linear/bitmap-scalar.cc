// Bitmap format conversions and the portable (scalar) sparse linear / 1x1 conv kernels.
#include <cstring>

#include "activation.h"
#include "prunekit/format24.h"
#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

template <typename Bits>
void scan_rows(const Bits* dense, bool is_float, int64_t k, uint16_t* bitmap, int64_t* row_nnz, int64_t row_begin,
               int64_t row_end) {
  const int64_t words = bitmap_words(k);
  for (int64_t r = row_begin; r < row_end; ++r) {
    int64_t count = 0;
    for (int64_t w = 0; w < words; ++w) {
      uint32_t word = 0;
      const int64_t end = (w + 1) * kBitmapWordBits < k ? (w + 1) * kBitmapWordBits : k;
      for (int64_t c = w * kBitmapWordBits; c < end; ++c) {
        if (format24::is_nonzero(dense[r * k + c], is_float)) {
          word |= 1u << (c - w * kBitmapWordBits);
          ++count;
        }
      }
      bitmap[r * words + w] = uint16_t(word);
    }
    row_nnz[r] = count;
  }
}

template <typename Bits>
void pack_rows(const Bits* dense, int64_t k, const uint16_t* bitmap, const int64_t* row_offsets, Bits* values,
               int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  for (int64_t r = row_begin; r < row_end; ++r) {
    Bits* out = values + row_offsets[r];
    for (int64_t w = 0; w < words; ++w) {
      for (uint32_t word = bitmap[r * words + w]; word; word &= word - 1) {
        *out++ = dense[r * k + w * kBitmapWordBits + __builtin_ctz(word)];
      }
    }
  }
}

template <typename Bits>
void unpack_rows(const Bits* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t k, Bits* dense,
                 int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  for (int64_t r = row_begin; r < row_end; ++r) {
    std::memset(dense + r * k, 0, sizeof(Bits) * k);
    const Bits* in = values + row_offsets[r];
    for (int64_t w = 0; w < words; ++w) {
      for (uint32_t word = bitmap[r * words + w]; word; word &= word - 1) {
        dense[r * k + w * kBitmapWordBits + __builtin_ctz(word)] = *in++;
      }
    }
  }
}

inline float load_value(const void* values, ValueType type, int64_t i) {
  return type == ValueType::kFloat32 ? static_cast<const float*>(values)[i]
                                     : bf16_to_float(static_cast<const uint16_t*>(values)[i]);
}

}  // namespace

void bitmap_scan_scalar(const void* dense, int element_bytes, bool is_float, int64_t k, uint16_t* bitmap,
                        int64_t* row_nnz, RowRange range) {
  if (element_bytes == 2) {
    scan_rows(static_cast<const uint16_t*>(dense), is_float, k, bitmap, row_nnz, range.begin, range.end);
  } else {
    scan_rows(static_cast<const uint32_t*>(dense), is_float, k, bitmap, row_nnz, range.begin, range.end);
  }
}

void bitmap_pack_scalar(const void* dense, int element_bytes, int64_t k, const uint16_t* bitmap,
                        const int64_t* row_offsets, void* values, RowRange range) {
  if (element_bytes == 2) {
    pack_rows(static_cast<const uint16_t*>(dense), k, bitmap, row_offsets, static_cast<uint16_t*>(values), range.begin,
              range.end);
  } else {
    pack_rows(static_cast<const uint32_t*>(dense), k, bitmap, row_offsets, static_cast<uint32_t*>(values), range.begin,
              range.end);
  }
}

void bitmap_unpack_scalar(const BitmapWeightView& weight, void* dense, RowRange range) {
  if (weight.value_type == ValueType::kBFloat16) {
    unpack_rows(static_cast<const uint16_t*>(weight.values), weight.bitmap, weight.row_offsets, weight.cols,
                static_cast<uint16_t*>(dense), range.begin, range.end);
  } else {
    unpack_rows(static_cast<const uint32_t*>(weight.values), weight.bitmap, weight.row_offsets, weight.cols,
                static_cast<uint32_t*>(dense), range.begin, range.end);
  }
}

Status bitmap_validate_scalar(const BitmapWeightView& weight, RowRange range) {
  const uint16_t* bitmap = weight.bitmap;
  const int64_t* row_offsets = weight.row_offsets;
  const int64_t k = weight.cols, row_begin = range.begin, row_end = range.end;
  const int64_t words = bitmap_words(k);
  const uint32_t tail_bits = uint32_t(k - (words - 1) * kBitmapWordBits);
  const uint32_t tail_mask = tail_bits == 16 ? 0xffffu : (1u << tail_bits) - 1;
  for (int64_t r = row_begin; r < row_end; ++r) {
    int64_t count = 0;
    for (int64_t w = 0; w < words; ++w) count += __builtin_popcount(bitmap[r * words + w]);
    const bool tail_ok = (bitmap[r * words + words - 1] & ~tail_mask) == 0;
    if (!tail_ok || row_offsets[r + 1] - row_offsets[r] != count) {
      return Status{StatusCode::kCorruptMeta, r, 0};
    }
  }
  return Status{};
}

Status bitmap_gemv_scalar(const BitmapWeightView& weight, const GemvArgs& args, RowRange range) {
  const void* values = weight.values;
  const ValueType type = weight.value_type;
  const uint16_t* bitmap = weight.bitmap;
  const int64_t* row_offsets = weight.row_offsets;
  const int64_t rows = weight.rows, k = weight.cols, batch = args.batch;
  const float *x = args.x, *bias = args.bias;
  float* y = args.y;
  const int64_t words = bitmap_words(k);
  for (int64_t r = range.begin; r < range.end; ++r) {
    float acc[kGemvMaxBatch] = {};
    int64_t v = row_offsets[r];
    for (int64_t w = 0; w < words; ++w) {
      for (uint32_t word = bitmap[r * words + w]; word; word &= word - 1) {
        const int64_t c = w * kBitmapWordBits + __builtin_ctz(word);
        if (c >= k || v >= row_offsets[r + 1]) return Status{StatusCode::kCorruptMeta, r, c};
        const float weight = load_value(values, type, v++);
        for (int64_t b = 0; b < batch; ++b) acc[b] += weight * x[b * k + c];
      }
    }
    if (v != row_offsets[r + 1]) return Status{StatusCode::kCorruptMeta, r, 0};
    for (int64_t b = 0; b < batch; ++b) y[b * rows + r] = acc[b] + (bias ? bias[r] : 0.0f);
  }
  return Status{};
}

Status bitmap_spmm_scalar(const BitmapWeightView& weight, const SpmmArgs& args, RowRange range) {
  const void* values = weight.values;
  const ValueType type = weight.value_type;
  const uint16_t* bitmap = weight.bitmap;
  const int64_t* row_offsets = weight.row_offsets;
  const int64_t k = weight.cols, ldx = args.ldx, cols_x = args.cols_x, ldy = args.ldy;
  const float *x = args.x, *bias = args.bias;
  const Activation activation = args.activation;
  float* y = args.y;
  const int64_t words = bitmap_words(k);
  for (int64_t r = range.begin; r < range.end; ++r) {
    float* out = y + r * ldy;
    const float initial = bias ? bias[r] : 0.0f;
    for (int64_t p = 0; p < cols_x; ++p) out[p] = initial;
    int64_t v = row_offsets[r];
    for (int64_t w = 0; w < words; ++w) {
      for (uint32_t word = bitmap[r * words + w]; word; word &= word - 1) {
        const int64_t c = w * kBitmapWordBits + __builtin_ctz(word);
        if (c >= k || v >= row_offsets[r + 1]) return Status{StatusCode::kCorruptMeta, r, c};
        const float weight = load_value(values, type, v++);
        const float* in = x + c * ldx;
        for (int64_t p = 0; p < cols_x; ++p) out[p] += weight * in[p];
      }
    }
    if (v != row_offsets[r + 1]) return Status{StatusCode::kCorruptMeta, r, 0};
    for (int64_t p = 0; p < cols_x; ++p) out[p] = activate_scalar(out[p], activation);
  }
  return Status{};
}

}  // namespace prunekit::cpu
