// Torch-free CPU kernels on raw pointers. Each works on a range of rows so that the ATen glue
// can split the work over threads; each returns a Status instead of throwing.
#pragma once

#include <cstdint>

#include "prunekit/dtypes.h"

namespace prunekit::cpu {

enum class StatusCode : int {
  kOk = 0,
  kTooManyNonzeros = 1,  // a 2:4 group holds more than two nonzeros
  kCorruptMeta = 2,      // a meta nibble does not name two distinct, ascending columns
  kNonFinite = 3,        // a score is NaN or infinite
};

struct Status {
  StatusCode code = StatusCode::kOk;
  int64_t row = 0;
  int64_t col = 0;  // first dense column of the offending group / the offending entry
  bool ok() const { return code == StatusCode::kOk; }
};

// 2:4 compression of rows [row_begin, row_end) of a row-major (rows, k) matrix whose entries are
// element_bytes wide (1, 2 or 4); is_float selects whether -0.0 counts as zero. Writes values
// (rows, k/2) and reordered meta (see prunekit/format24.h). rows and k must satisfy the layout's
// alignment; the caller checks that.
Status compress24_rows_scalar(const void* dense, void* values, void* meta, int64_t rows, int64_t k,
                              int element_bytes, bool is_float, int64_t row_begin, int64_t row_end);

// Inverse of compress24: fills rows [row_begin, row_end) of dense (rows, k) including zeros.
Status decompress24_rows_scalar(const void* values, const void* meta, void* dense, int64_t rows,
                                int64_t k, int element_bytes, int64_t row_begin, int64_t row_end);

// N:M keep-mask: in every group of m consecutive entries of a row (rows, k), keep the n largest
// scores; equal scores keep the lower index. k must be a multiple of m, 0 <= n <= m.
Status nm_mask_rows_scalar(const void* scores, ScoreType type, bool* keep, int64_t k, int64_t n,
                           int64_t m, int64_t row_begin, int64_t row_end);

}  // namespace prunekit::cpu
