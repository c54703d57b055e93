// CPU impls of the bitmap format's ops: compress_bitmap (dense -> values, bitmap, row_offsets)
// and decompress_bitmap, exactly.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernel_memory.h"
#include "prunekit/check.h"
#include "prunekit/kernels_cpu.h"
#include "weight_rows.h"

namespace prunekit {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> compress_bitmap(const at::Tensor& dense) {
  constexpr const char* op = "compress_bitmap";
  check_dtype(dense, op, "dense", {at::kFloat, at::kBFloat16});
  check_dim(dense, op, "dense", 2);
  check_contiguous(dense, op, "dense");
  check_nonempty(dense, op, "dense");
  const int64_t rows = dense.size(0), k = dense.size(1);
  at::Tensor bitmap = empty_for_kernels({rows, cpu::bitmap_words(k)}, dense.options().dtype(at::kShort));
  at::Tensor row_nnz = at::empty({rows}, dense.options().dtype(at::kLong));
  auto* bits = reinterpret_cast<uint16_t*>(bitmap.data_ptr<int16_t>());
  const int element_bytes = int(dense.element_size());
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    cpu::bitmap_scan_scalar(dense.data_ptr(), element_bytes, true, k, bits, row_nnz.data_ptr<int64_t>(), {begin, end});
  });
  at::Tensor row_offsets = at::zeros({rows + 1}, row_nnz.options());
  row_offsets.narrow(0, 1, rows).copy_(row_nnz.cumsum(0));
  at::Tensor values = empty_for_kernels({row_offsets[rows].item<int64_t>()}, dense.options());
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    cpu::bitmap_pack_scalar(dense.data_ptr(), element_bytes, k, bits, row_offsets.data_ptr<int64_t>(),
                            values.data_ptr(), {begin, end});
  });
  return {values, bitmap, row_offsets};
}

at::Tensor decompress_bitmap(const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& row_offsets,
                             int64_t cols) {
  constexpr const char* op = "decompress_bitmap";
  const auto [weight, k] = check_bitmap_weight(op, values, bitmap, row_offsets, cols);
  const cpu::BitmapWeightView view = bitmap_view(values, bitmap, weight, k);
  validate_bitmap(op, view, weight);  // checks the offsets too
  at::Tensor dense = at::empty({weight.rows, k}, values.options());
  at::parallel_for(0, weight.rows, 64, [&](int64_t begin, int64_t end) {
    cpu::bitmap_unpack_scalar(view, dense.data_ptr(), {begin, end});
  });
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("compress_bitmap", &compress_bitmap);
  m.impl("decompress_bitmap", &decompress_bitmap);
}

}  // namespace prunekit
