// CSR16 sparse linear GEMV: each nonzero is one scalar load of x at its 16-bit column index and one
// multiply-add. At high sparsity this beats the bitmap kernels, whose cost is per 16-column word
// (expanding mostly-empty words) rather than per nonzero: plain scalar loads and FMAs run on every
// CPU at two to three per cycle, with no shuffles and no gathers (microcoded on several CPUs).
// Written once in plain C++ and compiled per ISA: the variant .cc files include this with their
// own target flags (FMA and wider vectors for the index check make the AVX2 build 10-15% faster
// than the portable one). Internal linkage, so variants never mix.
#pragma once

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

// Four partial sums per batch row, so that four multiply-adds are in flight.
template <int B, ValueType T>
Status gemv_rows(const void* values, const uint16_t* col_indices, const int64_t* row_offsets, int64_t rows,
                 int64_t k, const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    int64_t i = row_offsets[r];
    const int64_t end = row_offsets[r + 1];
    if (i < end) {
      const uint32_t highest = highest_column(col_indices, i, end);
      if (int64_t(highest) >= k) return Status{StatusCode::kCorruptMeta, r, int64_t(highest)};
    }
    float sums[B][4] = {};
    for (; i + 4 <= end; i += 4) {
      for (int j = 0; j < 4; ++j) {
        const float w = value_at<T>(values, i + j);
        const uint32_t c = col_indices[i + j];
        for (int b = 0; b < B; ++b) sums[b][j] += w * x[b * k + c];
      }
    }
    for (; i < end; ++i) {
      const float w = value_at<T>(values, i);
      const uint32_t c = col_indices[i];
      for (int b = 0; b < B; ++b) sums[b][0] += w * x[b * k + c];
    }
    for (int b = 0; b < B; ++b) {
      y[b * rows + r] = ((sums[b][0] + sums[b][1]) + (sums[b][2] + sums[b][3])) + (bias ? bias[r] : 0.0f);
    }
  }
  return Status{};
}

template <ValueType T>
Status gemv_batch(const void* values, const uint16_t* col_indices, const int64_t* row_offsets, int64_t rows,
                  int64_t k, const float* x, int64_t batch, const float* bias, float* y, int64_t row_begin,
                  int64_t row_end) {
  switch (batch) {
    case 1: return gemv_rows<1, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 2: return gemv_rows<2, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4, T>(values, col_indices, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

// The variant entry points: argument checks, then the value type and the batch as template
// parameters.
inline Status csr16_gemv(const void* values, ValueType type, const uint16_t* col_indices, const int64_t* row_offsets,
                         int64_t rows, int64_t k, const float* x, int64_t batch, const float* bias, float* y,
                         int64_t row_begin, int64_t row_end) {
  if (batch < 1 || batch > kGemvMaxBatch || k < 1 || k > kCsr16MaxColumns) {
    return Status{StatusCode::kBadArgument, 0, 0};
  }
  if (type == ValueType::kFloat32) {
    return gemv_batch<ValueType::kFloat32>(values, col_indices, row_offsets, rows, k, x, batch, bias, y,
                                           row_begin, row_end);
  }
  return gemv_batch<ValueType::kBFloat16>(values, col_indices, row_offsets, rows, k, x, batch, bias, y,
                                          row_begin, row_end);
}

}  // namespace
}  // namespace prunekit::cpu
