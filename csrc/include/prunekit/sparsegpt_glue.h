// SparseGPT's blocked solve as ATen glue shared by every device (csrc/generic/sparsegpt_ops.cpp
// defines it): the argument checks, the exact-count mask of an unstructured block, and the block
// loop (mask, in-block OBS updates chunk by chunk, the lazy GEMM updates). A device plugs in its
// in-block step: ATen ops (the CompositeExplicitAutograd kernel) or a fused kernel (CUDA).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <functional>

#include "prunekit/check.h"
#include "prunekit/obs_block_layout.h"

namespace prunekit::sparsegpt {

inline void check_solve_args(const at::Tensor& weight, const at::Tensor& hinv, double sparsity, int64_t n, int64_t m,
                             int64_t blocksize) {
  constexpr const char* op = "sparsegpt_solve_";
  check_dtype(weight, op, "weight", {at::kFloat});
  check_dim(weight, op, "weight", 2);
  check_contiguous(weight, op, "weight");
  check_nonempty(weight, op, "weight");
  const int64_t cols = weight.size(1);
  check_dtype(hinv, op, "hinv", {at::kFloat});
  check_contiguous(hinv, op, "hinv");
  check_same_device(weight, "weight", hinv, "hinv", op);
  TORCH_CHECK_VALUE(hinv.dim() == 2 && hinv.size(0) == cols && hinv.size(1) == cols, "prunekit.", op,
                    ": argument 'hinv' must have shape [", cols, ", ", cols, "], but got ", hinv.sizes());
  TORCH_CHECK_VALUE(sparsity >= 0.0 && sparsity < 1.0, "prunekit.", op,
                    ": argument 'sparsity' must be in [0, 1), but got ", sparsity);
  TORCH_CHECK_VALUE(blocksize >= 1, "prunekit.", op, ": argument 'blocksize' must be >= 1, but got ", blocksize);
  if (m != 0) {
    TORCH_CHECK_VALUE(m >= 2 && m <= obs::kMaxGroup && n >= 1 && n < m, "prunekit.", op,
                      ": arguments (n, m) must satisfy 1 <= n < m <= ", obs::kMaxGroup,
                      " (or m = 0 for unstructured), but got (", n, ", ", m, ")");
    check_multiple(cols, m, op, "in_features (columns of 'weight') for the N:M pattern");
    check_multiple(blocksize, m, op, "'blocksize' for the N:M pattern");
  } else {
    TORCH_CHECK_VALUE(n == 0, "prunekit.", op, ": argument 'n' must be 0 when m = 0, but got ", n);
  }
}

// Unstructured pruning counts exactly: after the block ending at column `end`,
// round(sparsity * rows * end) entries are pruned in all.
inline int64_t pruned_after(double sparsity, int64_t rows, int64_t end) {
  return int64_t(std::nearbyint(sparsity * double(rows) * double(end)));
}

// keep_block (bool, rows x cols, contiguous) <- false for exactly the `prune_count` smallest scores
// (w / d)^2 of the block, ties by lower flat index (as prune_mask_smallest on CPU), true elsewhere.
void select_block_mask(const at::Tensor& w_block, const at::Tensor& diag_block, int64_t prune_count,
                       at::Tensor& keep_block);

// One chunk of a block for a device's in-block step. w: the chunk's columns of the weight (a view
// with the weight's row stride); hinv: the chunk's diagonal slice of the factor (a view); err and
// keep: the chunk's columns of the block's buffers (views of contiguous rows x block tensors).
// Unstructured (m == 0): keep holds the block's mask, read; N:M: the step chooses it and writes it.
// The step leaves in err the errors (w_i - kept_i) / d_i of every column (0 where kept).
struct Chunk {
  at::Tensor w, hinv, err, keep;
  int64_t n, m;
};
using ChunkStep = std::function<void(const Chunk&)>;

// The blocked solve in place on `weight` (checked by check_solve_args): per block of `blocksize`
// columns, the unstructured mask, then chunks of obs::chunk_width(max_chunk, m) columns through
// `step` with a GEMM carrying each chunk's errors to the rest of the block, then one GEMM carrying
// the block's errors to all later columns. Returns the keep-mask.
at::Tensor blocked_solve(at::Tensor& weight, const at::Tensor& hinv, double sparsity, int64_t n, int64_t m,
                         int64_t blocksize, int64_t max_chunk, const ChunkStep& step);

}  // namespace prunekit::sparsegpt
