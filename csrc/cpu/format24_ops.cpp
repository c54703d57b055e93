// CPU impls of the 2:4 format's ops (compress_24, decompress_24): the shared argument checks, then
// the core kernels over row ranges.
#include <torch/library.h>

#include "kernel_memory.h"
#include "parallel_rows.h"
#include "prunekit/check.h"
#include "prunekit/format24.h"
#include "prunekit/format24_checks.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit {
namespace {

using cpu::Status;

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
  const Status status = run_rows(rows, grain_for(k), [&](int64_t begin, int64_t end) {
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
  const Status status = run_rows(rows, grain_for(k), [&](int64_t begin, int64_t end) {
    return cpu::format24_decompress_scalar(values_in, meta_in, out, rows, k, element_bytes, {begin, end});
  });
  TORCH_CHECK_VALUE(status.ok(), corrupt_meta_message(status.row, status.col));
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("compress_24", &compress_24_cpu);
  m.impl("decompress_24", &decompress_24_cpu);
}

}  // namespace prunekit
