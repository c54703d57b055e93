// CPU impls of the N:M mask and 2:4 format ops: argument checks, then the core kernels over
// row ranges with at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernel_memory.h"
#include "prunekit/check.h"
#include "prunekit/format24.h"
#include "prunekit/format24_checks.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit {
namespace {

using cpu::Status;
using cpu::StatusCode;

// Rows per task: enough work per thread to amortise the fork.
int64_t grain_for(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_length, 1)); }

template <typename Kernel>
Status run_rows(int64_t rows, int64_t row_length, Kernel kernel) {
  FirstError<Status> error;
  at::parallel_for(0, rows, grain_for(row_length),
                   [&](int64_t begin, int64_t end) { error.record(kernel(begin, end)); });
  return error.get();
}

at::Tensor nm_mask_cpu(const at::Tensor& scores, int64_t n, int64_t m) {
  check_nm_mask_args(scores, n, m);
  const int64_t k = scores.size(-1);
  const int64_t rows = scores.numel() / k;
  at::Tensor keep = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  const void* in = scores.data_ptr();
  bool* out = keep.data_ptr<bool>();
  const ScoreType type = score_type(scores.scalar_type());
  const Status status = run_rows(rows, k, [&](int64_t begin, int64_t end) {
    return cpu::nm_mask_select_scalar(in, type, out, k, n, m, {begin, end});
  });
  TORCH_CHECK_VALUE(status.ok(), "prunekit.nm_mask: argument 'scores' must be finite, but entry ",
                    status.col, " of row ", status.row, " (rows flattened over leading dims) is ",
                    scores.reshape({rows, k})[status.row][status.col].item<double>());
  return keep;
}

std::tuple<at::Tensor, at::Tensor> compress_24_cpu(const at::Tensor& dense) {
  const auto shapes = check_compress_24_args(dense);
  at::Tensor values = empty_for_kernels(shapes.values, dense.options());
  at::Tensor meta = empty_for_kernels(shapes.meta, dense.options().dtype(shapes.meta_dtype));
  const int64_t rows = dense.size(0), k = dense.size(1);
  const int element_bytes = int(dense.element_size());
  const bool is_float = dense.is_floating_point();
  const void* in = dense.data_ptr();
  void* values_out = values.data_ptr();
  void* meta_out = meta.data_ptr();
  const Status status = run_rows(rows, k, [&](int64_t begin, int64_t end) {
    return cpu::format24_compress_scalar(in, values_out, meta_out, rows, k, element_bytes, is_float, {begin, end});
  });
  TORCH_CHECK_VALUE(status.ok(), too_many_nonzeros_message(status.row, status.col));
  return {values, meta};
}

at::Tensor decompress_24_cpu(const at::Tensor& values, const at::Tensor& meta) {
  const auto dense_shape = check_decompress_24_args(values, meta);
  at::Tensor dense = at::empty(dense_shape, values.options());
  const int64_t rows = dense_shape[0], k = dense_shape[1];
  const int element_bytes = int(values.element_size());
  const void* values_in = values.data_ptr();
  const void* meta_in = meta.data_ptr();
  void* out = dense.data_ptr();
  const Status status = run_rows(rows, k, [&](int64_t begin, int64_t end) {
    return cpu::format24_decompress_scalar(values_in, meta_in, out, rows, k, element_bytes, {begin, end});
  });
  TORCH_CHECK_VALUE(status.ok(), corrupt_meta_message(status.row, status.col));
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("nm_mask", &nm_mask_cpu);
  m.impl("compress_24", &compress_24_cpu);
  m.impl("decompress_24", &decompress_24_cpu);
}

}  // namespace prunekit
