// SparseGPT's blocked OBS solve on CPU: per block, the exact-count mask (nth_element), the fused
// in-block column updates (core kernel, rows split over threads), then one GEMM applies the
// block's errors to all later columns (lazy batch update). The arguments are checked as on every
// device (sparsegpt_glue.h); the running Hessian is device-generic (csrc/generic).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "prunekit/kernel_config.h"
#include "prunekit/kernels_cpu.h"
#include "prunekit/sparsegpt_glue.h"

namespace prunekit {
namespace {

at::Tensor sparsegpt_solve_(at::Tensor& weight, const at::Tensor& hinv, double sparsity, int64_t n, int64_t m,
                            int64_t blocksize) {
  sparsegpt::check_solve_args(weight, hinv, sparsity, n, m, blocksize);
  const int64_t rows = weight.size(0), cols = weight.size(1);
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
      const int64_t target = sparsegpt::pruned_after(sparsity, rows, end);
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

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("sparsegpt_solve_", &sparsegpt_solve_); }

}  // namespace prunekit
