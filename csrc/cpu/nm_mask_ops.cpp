// CPU impl of the N:M keep-mask op: argument checks, then the core kernel over row ranges.
#include <torch/library.h>

#include "parallel_rows.h"
#include "prunekit/check.h"
#include "prunekit/kernels_cpu.h"
#include "prunekit/nm_mask_checks.h"

namespace prunekit {
namespace {

using cpu::Status;

at::Tensor nm_mask_cpu(const at::Tensor& scores, int64_t n, int64_t m) {
  check_nm_mask_args(scores, n, m);
  const int64_t k = scores.size(-1);
  const int64_t rows = scores.numel() / k;
  at::Tensor keep = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  const void* in = scores.data_ptr();
  bool* out = keep.data_ptr<bool>();
  const ScoreType type = score_type(scores.scalar_type());
  const Status status = run_rows(rows, grain_for(k), [&](int64_t begin, int64_t end) {
    return cpu::nm_mask_select_scalar(in, type, out, k, n, m, {begin, end});
  });
  TORCH_CHECK_VALUE(status.ok(), "prunekit.nm_mask: argument 'scores' must be finite, but entry ", status.col,
                    " of row ", status.row, " (rows flattened over leading dims) is ",
                    scores.reshape({rows, k})[status.row][status.col].item<double>());
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("nm_mask", &nm_mask_cpu); }

}  // namespace prunekit
