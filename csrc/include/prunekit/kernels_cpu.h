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

namespace prunekit::cpu {

// SparseGPT in-block OBS column updates for rows [row_begin, row_end) of one block of `cols`
// columns. w: the block's first column of a row-major fp32 weight (row stride ldw), updated in
// place (pruned entries become 0, the rest absorb the error). hinv: the block's diagonal block of
// the upper Cholesky factor of H^-1 (row stride ldh). err (rows x cols, contiguous): the scaled
// errors, for the caller's lazy update of later columns. keep (rows x cols, contiguous): the mask,
// read when m == 0 (chosen beforehand), written when m > 0 (n kept of every m, on updated weights).
// One symbol per ISA variant; kernel_select.h picks one at run time.
#define PRUNEKIT_DECLARE_OBS_BLOCK(isa)                                                          \
  void obs_block_rows_##isa(float* w, int64_t ldw, const float* hinv, int64_t ldh, int64_t cols, \
                            float* err, bool* keep, int64_t n, int64_t m, int64_t row_begin,     \
                            int64_t row_end);
PRUNEKIT_DECLARE_OBS_BLOCK(scalar)
PRUNEKIT_DECLARE_OBS_BLOCK(avx2)
PRUNEKIT_DECLARE_OBS_BLOCK(avx512)
PRUNEKIT_DECLARE_OBS_BLOCK(neon)
#undef PRUNEKIT_DECLARE_OBS_BLOCK

// keep[i] = false for exactly the k smallest scores (ties: lower index first), true otherwise.
void prune_smallest_scalar(const float* scores, int64_t count, int64_t k, bool* keep);

}  // namespace prunekit::cpu
