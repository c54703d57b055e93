// SparseGPT for every device, from ATen ops: the running Hessian (hessian_accumulate_: one GEMM per
// batch, cuBLAS on CUDA), and the blocked solve: the block loop shared with the fused kernels
// (sparsegpt_glue.h) and an in-block step that follows the CPU kernel's arithmetic (sub-
// blocks of 16 columns updated column by column, a GEMM carrying their errors to the rest of the
// block). Registered as the CompositeExplicitAutograd kernel of sparsegpt_solve_, so a device
// without a fused kernel runs it; CPU and CUDA register their own (the tests reach this one through
// the dispatcher's kernel for a backend without a registration, torch.library.get_kernel).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "prunekit/sparsegpt_glue.h"

namespace prunekit::sparsegpt {

void select_block_mask(const at::Tensor& w_block, const at::Tensor& diag_block, int64_t prune_count,
                       at::Tensor& keep_block) {
  if (prune_count <= 0) {
    keep_block.fill_(true);
    return;
  }
  if (prune_count >= keep_block.numel()) {
    keep_block.fill_(false);
    return;
  }
  const at::Tensor scores = (w_block / diag_block).square().reshape({-1});
  // A stable ascending sort lists equal scores by index, so its first prune_count entries are
  // exactly the smallest with ties by lower index.
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor flat = keep_block.view({-1});
  flat.fill_(true);
  flat.index_fill_(0, order.narrow(0, 0, prune_count), false);
}

at::Tensor blocked_solve(at::Tensor& weight, const at::Tensor& hinv, double sparsity, int64_t n, int64_t m,
                         int64_t blocksize, int64_t max_chunk, const ChunkStep& step) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  at::Tensor keep = at::empty({rows, cols}, weight.options().dtype(at::kBool));
  const int64_t width = std::min(blocksize, cols), chunk = obs::chunk_width(max_chunk, m);
  const at::Tensor err_buffer = at::empty({rows * width}, weight.options());
  const at::Tensor keep_buffer = at::empty({rows * width}, weight.options().dtype(at::kBool));
  const at::Tensor diag = hinv.diagonal();
  int64_t pruned_so_far = 0;
  for (int64_t begin = 0; begin < cols; begin += blocksize) {
    const int64_t end = std::min(begin + blocksize, cols), count = end - begin;
    const at::Tensor err = err_buffer.narrow(0, 0, rows * count).view({rows, count});
    at::Tensor block_keep = keep_buffer.narrow(0, 0, rows * count).view({rows, count});
    if (m == 0) {
      const int64_t target = pruned_after(sparsity, rows, end);
      select_block_mask(weight.narrow(1, begin, count), diag.narrow(0, begin, count), target - pruned_so_far,
                        block_keep);
      pruned_so_far = target;
    }
    for (int64_t c0 = begin; c0 < end; c0 += chunk) {
      const int64_t c1 = std::min(c0 + chunk, end), chunk_cols = c1 - c0;
      const at::Tensor chunk_err = err.narrow(1, c0 - begin, chunk_cols);
      step(Chunk{weight.narrow(1, c0, chunk_cols), hinv.narrow(0, c0, chunk_cols).narrow(1, c0, chunk_cols), chunk_err,
                 block_keep.narrow(1, c0 - begin, chunk_cols), n, m});
      if (c1 < end) {
        weight.narrow(1, c1, end - c1)
            .addmm_(chunk_err, hinv.narrow(0, c0, chunk_cols).narrow(1, c1, end - c1), 1.0, -1.0);
      }
    }
    keep.narrow(1, begin, count).copy_(block_keep);
    if (end < cols) {
      weight.narrow(1, end, cols - end).addmm_(err, hinv.narrow(0, begin, count).narrow(1, end, cols - end), 1.0, -1.0);
    }
  }
  return keep;
}

namespace {

// Tile width of the symmetric Hessian update on CPU: wide enough for GEMM efficiency.
constexpr int64_t kHessianTile = 192;

// left_t @ right_t^T = X_i^T X_j for row-major X^T slices, by oneDNN's linear: the op torch's
// CPU wheels register as mkldnn::_linear_pointwise (called boxed: no link to its C++ symbol).
at::Tensor onednn_product(const at::Tensor& left_t, const at::Tensor& right_t) {
  static const c10::OperatorHandle linear =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack{left_t,
                                 right_t,
                                 c10::IValue(),
                                 c10::IValue(std::string("none")),
                                 c10::IValue(c10::List<std::optional<at::Scalar>>()),
                                 c10::IValue(std::string(""))};
  linear.callBoxed(&stack);
  return stack.at(0).toTensor();
}

void hessian_accumulate_(at::Tensor& hessian, const at::Tensor& x, int64_t n_seen, c10::string_view gemm) {
  constexpr const char* op = "hessian_accumulate_";
  check_dtype(hessian, op, "hessian", {at::kFloat, at::kDouble});
  check_dim(hessian, op, "hessian", 2);
  check_contiguous(hessian, op, "hessian");
  TORCH_CHECK_VALUE(hessian.size(0) == hessian.size(1), "prunekit.", op,
                    ": argument 'hessian' must be square, but got shape ", hessian.sizes());
  check_dtype(x, op, "x", {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  check_dim(x, op, "x", 2);
  TORCH_CHECK_VALUE(x.size(1) == hessian.size(0), "prunekit.", op, ": argument 'x' must have ", hessian.size(0),
                    " columns (the Hessian's size), but got shape ", x.sizes());
  check_same_device(hessian, "hessian", x, "x", op);
  TORCH_CHECK_VALUE(n_seen >= 0, "prunekit.", op, ": argument 'n_seen' must be >= 0, but got ", n_seen);
  TORCH_CHECK_VALUE(gemm == "aten" || gemm == "onednn", "prunekit.", op,
                    ": argument 'gemm' must be 'aten' or 'onednn', but got '", gemm, "'");
  const int64_t rows = x.size(0);
  if (rows == 0) return;
  const at::Tensor xs = x.to(hessian.scalar_type());
  TORCH_CHECK_VALUE(all_finite(xs), "prunekit.", op,
                    ": argument 'x' must be finite, but it holds NaN or Inf (NaN activations?)");
  const double total = double(n_seen) + double(rows);
  // Running mean: old sum rescaled, new batch added with the same 2/n normalisation.
  const double beta = double(n_seen) / total, alpha = 2.0 / total;
  const int64_t features = hessian.size(0);
  const int64_t tiles = (features + kHessianTile - 1) / kHessianTile;
  // oneDNN's linear runs fp32 on CPU; anything else takes the device's BLAS.
  const bool onednn = gemm == "onednn" && hessian.is_cpu() && hessian.scalar_type() == at::kFloat;
  const at::Tensor xt = onednn ? xs.t().contiguous() : at::Tensor();
  // X_i^T X_j for the column ranges [i, i + rows_i) and [j, j + cols_j) of X.
  const auto product = [&](int64_t i, int64_t rows_i, int64_t j, int64_t cols_j) {
    return onednn ? onednn_product(xt.narrow(0, i, rows_i), xt.narrow(0, j, cols_j))
                  : at::mm(xs.narrow(1, i, rows_i).t(), xs.narrow(1, j, cols_j));
  };
  if (!hessian.is_cpu() || tiles < 3) {
    if (onednn) {
      hessian.mul_(beta).add_(product(0, features, 0, features), alpha);
    } else {
      hessian.addmm_(xs.t(), xs, beta, alpha);
    }
    return;
  }
  // X^T X is symmetric: on CPU only the tiles on and below the diagonal are multiplied (at 3+
  // tiles a third or more of the GEMM work saved), each off-diagonal product added to its tile and,
  // transposed, to the mirror tile. Each entry is still one GEMM's dot product of two columns over
  // the same rows, as in the whole product.
  const int64_t width = (features + tiles - 1) / tiles;
  for (int64_t i = 0; i < features; i += width) {
    const int64_t rows_i = std::min(width, features - i);
    for (int64_t j = 0; j <= i; j += width) {
      const int64_t cols_j = std::min(width, features - j);
      at::Tensor lower = hessian.narrow(0, i, rows_i).narrow(1, j, cols_j);
      if (j == i && !onednn) {
        lower.addmm_(xs.narrow(1, i, rows_i).t(), xs.narrow(1, j, cols_j), beta, alpha);
        continue;
      }
      const at::Tensor tile = product(i, rows_i, j, cols_j);
      lower.mul_(beta).add_(tile, alpha);
      if (j != i) hessian.narrow(0, j, cols_j).narrow(1, i, rows_i).mul_(beta).add_(tile.t(), alpha);
    }
  }
}

// The in-block step from ATen ops, column by column as the CPU kernel's sub-blocks do.
void aten_chunk_step(const Chunk& c) {
  const int64_t width = c.w.size(1);
  const at::Tensor diag = c.hinv.diagonal();
  for (int64_t i = 0; i < width; ++i) {
    if (c.m > 0 && i % c.m == 0) {
      const at::Tensor scores = (c.w.narrow(1, i, c.m) / diag.narrow(0, i, c.m)).square();
      // Stable descending: among equal scores the lower column comes first, as on CPU.
      const at::Tensor top = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/true));
      at::Tensor group = c.keep.narrow(1, i, c.m);
      group.fill_(false);
      group.scatter_(1, top.narrow(1, 0, c.n), true);
    }
    at::Tensor col = c.w.select(1, i);
    const at::Tensor kept = at::where(c.keep.select(1, i), col, at::Scalar(0.0f));
    const at::Tensor error = (col - kept) / diag.select(0, i);
    if (i + 1 < width) {
      c.w.narrow(1, i + 1, width - i - 1)
          .sub_(error.unsqueeze(1) * c.hinv.select(0, i).narrow(0, i + 1, width - i - 1));
    }
    c.err.select(1, i).copy_(error);
    col.copy_(kept);
  }
}

at::Tensor sparsegpt_solve_generic(at::Tensor& weight, const at::Tensor& hinv, double sparsity, int64_t n, int64_t m,
                                   int64_t blocksize) {
  check_solve_args(weight, hinv, sparsity, n, m, blocksize);
  return blocked_solve(weight, hinv, sparsity, n, m, blocksize, obs::kGenericChunk, aten_chunk_step);
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CompositeExplicitAutograd, m) {
  m.impl("hessian_accumulate_", &hessian_accumulate_);
  m.impl("sparsegpt_solve_", &sparsegpt_solve_generic);
}

}  // namespace prunekit::sparsegpt
