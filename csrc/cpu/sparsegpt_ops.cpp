// SparseGPT ops on CPU: the running Hessian (composite, so CUDA runs it too) and the blocked OBS
// solve: per block, the fused in-block column updates (core kernel, rows split over threads),
// then one GEMM applies the block's errors to all later columns (lazy batch update).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "prunekit/check.h"
#include "prunekit/kernel_config.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit {
namespace {

constexpr int64_t kMaxGroup = 64;  // the largest m the N:M selection handles

void hessian_accumulate_(at::Tensor& hessian, const at::Tensor& x, int64_t n_seen) {
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
  const int64_t rows = x.size(0);
  if (rows == 0) return;
  const at::Tensor xs = x.to(hessian.scalar_type());
  TORCH_CHECK_VALUE(xs.isfinite().all().item<bool>(), "prunekit.", op,
                    ": argument 'x' must be finite, but it holds NaN or Inf (NaN activations?)");
  const double total = double(n_seen) + double(rows);
  // Running mean: old sum rescaled, new batch added with the same 2/n normalisation.
  hessian.addmm_(xs.t(), xs, double(n_seen) / total, 2.0 / total);
}

at::Tensor sparsegpt_solve_(at::Tensor& weight, const at::Tensor& hinv, double sparsity, int64_t n, int64_t m,
                            int64_t blocksize) {
  constexpr const char* op = "sparsegpt_solve_";
  check_dtype(weight, op, "weight", {at::kFloat});
  check_dim(weight, op, "weight", 2);
  check_contiguous(weight, op, "weight");
  check_nonempty(weight, op, "weight");
  const int64_t rows = weight.size(0), cols = weight.size(1);
  check_dtype(hinv, op, "hinv", {at::kFloat});
  check_contiguous(hinv, op, "hinv");
  check_same_device(weight, "weight", hinv, "hinv", op);
  TORCH_CHECK_VALUE(hinv.dim() == 2 && hinv.size(0) == cols && hinv.size(1) == cols, "prunekit.", op,
                    ": argument 'hinv' must have shape [", cols, ", ", cols, "], but got ", hinv.sizes());
  TORCH_CHECK_VALUE(sparsity >= 0.0 && sparsity < 1.0, "prunekit.", op,
                    ": argument 'sparsity' must be in [0, 1), but got ", sparsity);
  TORCH_CHECK_VALUE(blocksize >= 1, "prunekit.", op, ": argument 'blocksize' must be >= 1, but got ", blocksize);
  if (m != 0) {
    TORCH_CHECK_VALUE(m >= 2 && m <= kMaxGroup && n >= 1 && n < m, "prunekit.", op,
                      ": arguments (n, m) must satisfy 1 <= n < m <= ", kMaxGroup,
                      " (or m = 0 for unstructured), but got (", n, ", ", m, ")");
    check_multiple(cols, m, op, "in_features (columns of 'weight') for the N:M pattern");
    check_multiple(blocksize, m, op, "'blocksize' for the N:M pattern");
  } else {
    TORCH_CHECK_VALUE(n == 0, "prunekit.", op, ": argument 'n' must be 0 when m = 0, but got ", n);
  }

  const auto obs_block = cpu::cpu_kernel_config().obs_block_update;
  at::Tensor keep = at::empty({rows, cols}, weight.options().dtype(at::kBool));
  const int64_t width = std::min(blocksize, cols);
  at::Tensor err_buffer = at::empty({rows * width}, weight.options());
  at::Tensor keep_buffer = at::empty({rows * width}, weight.options().dtype(at::kBool));
  const at::Tensor hinv_diag = hinv.diagonal();
  float* w = weight.data_ptr<float>();
  const float* h = hinv.data_ptr<float>();
  int64_t pruned_so_far = 0;
  for (int64_t begin = 0; begin < cols; begin += blocksize) {
    const int64_t end = std::min(begin + blocksize, cols), count = end - begin;
    at::Tensor err = err_buffer.narrow(0, 0, rows * count).view({rows, count});
    at::Tensor block_keep = keep_buffer.narrow(0, 0, rows * count).view({rows, count});
    if (m == 0) {
      // Exact running count: after this block, round(sparsity * rows * end) entries are pruned.
      const int64_t target = int64_t(std::nearbyint(sparsity * double(rows) * double(end)));
      const at::Tensor scores =
          (weight.narrow(1, begin, count) / hinv_diag.narrow(0, begin, count)).square().contiguous();
      cpu::prune_mask_smallest_scalar(scores.data_ptr<float>(), rows * count, target - pruned_so_far,
                                      block_keep.data_ptr<bool>());
      pruned_so_far = target;
    }
    float* err_ptr = err.data_ptr<float>();
    bool* keep_ptr = block_keep.data_ptr<bool>();
    const cpu::ObsBlockArgs args{w + begin, cols, h + begin * cols + begin, cols, count, err_ptr, keep_ptr, n, m};
    at::parallel_for(0, rows, 16, [&](int64_t row_begin, int64_t row_end) { obs_block(args, {row_begin, row_end}); });
    keep.narrow(1, begin, count).copy_(block_keep);
    if (end < cols) {
      at::Tensor rest = weight.narrow(1, end, cols - end);
      rest.addmm_(err, hinv.narrow(0, begin, count).narrow(1, end, cols - end), 1.0, -1.0);
    }
  }
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CompositeExplicitAutograd, m) { m.impl("hessian_accumulate_", &hessian_accumulate_); }

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("sparsegpt_solve_", &sparsegpt_solve_); }

}  // namespace prunekit
