// Argument checks and output shapes of the 2:4 format ops, shared by the CPU and CUDA glue so
// that both backends accept and reject exactly the same inputs.
#pragma once

#include <string>
#include <vector>

#include "prunekit/check.h"
#include "prunekit/format24.h"

namespace prunekit {

struct Compressed24Shapes {
  std::vector<int64_t> values;
  std::vector<int64_t> meta;
  at::ScalarType meta_dtype;
};

inline format24::Layout layout_for(at::ScalarType dtype) {
  return format24::layout_for_element_bytes(int(c10::elementSize(dtype)));
}

inline Compressed24Shapes check_compress_24_args(const at::Tensor& dense) {
  constexpr const char* op = "compress_24";
  check_dtype(dense, op, "dense", {at::kHalf, at::kBFloat16, at::kChar, at::kFloat});
  check_dim(dense, op, "dense", 2);
  check_contiguous(dense, op, "dense");
  check_nonempty(dense, op, "dense");
  const auto layout = layout_for(dense.scalar_type());
  const int64_t rows = dense.size(0), k = dense.size(1);
  check_multiple(rows, layout.row_alignment, op, "the number of rows of 'dense'");
  check_multiple(k, layout.col_alignment, op, "the number of columns of 'dense'");
  return {{rows, k / 2}, {rows, k / (4 * layout.groups_per_meta)}, layout.meta_bytes == 2 ? at::kShort : at::kInt};
}

inline std::vector<int64_t> check_decompress_24_args(const at::Tensor& values, const at::Tensor& meta) {
  constexpr const char* op = "decompress_24";
  check_dtype(values, op, "values", {at::kHalf, at::kBFloat16, at::kChar, at::kFloat});
  const auto layout = layout_for(values.scalar_type());
  const at::ScalarType meta_dtype = layout.meta_bytes == 2 ? at::kShort : at::kInt;
  TORCH_CHECK_VALUE(meta.scalar_type() == meta_dtype, "prunekit.", op, ": argument 'meta' must have dtype ", meta_dtype,
                    " for values of dtype ", values.scalar_type(), ", but got ", meta.scalar_type());
  check_dim(values, op, "values", 2);
  check_dim(meta, op, "meta", 2);
  check_contiguous(values, op, "values");
  check_contiguous(meta, op, "meta");
  check_nonempty(values, op, "values");
  check_same_device(values, "values", meta, "meta", op);
  const int64_t rows = values.size(0), k = 2 * values.size(1);
  check_multiple(rows, layout.row_alignment, op, "the number of rows of 'values'");
  check_multiple(k, layout.col_alignment, op, "twice the number of columns of 'values'");
  const std::vector<int64_t> expected_meta{rows, k / (4 * layout.groups_per_meta)};
  TORCH_CHECK_VALUE(meta.sizes() == at::IntArrayRef(expected_meta), "prunekit.", op,
                    ": argument 'meta' must have shape ", at::IntArrayRef(expected_meta), " for values of shape ",
                    values.sizes(), ", but got ", meta.sizes());
  return {rows, k};
}

inline std::string too_many_nonzeros_message(int64_t row, int64_t col) {
  return "prunekit.compress_24: argument 'dense' must be 2:4 sparse (at most 2 nonzeros in every "
         "group of 4 columns), but the group at row " +
         std::to_string(row) + ", columns " + std::to_string(col) + ".." + std::to_string(col + 3) +
         " has more; prune it first, e.g. with prunekit.ops.nm_mask(dense.abs(), 2, 4)";
}

inline std::string corrupt_meta_message(int64_t row, int64_t col) {
  return "prunekit.decompress_24: argument 'meta' must encode two distinct ascending columns per "
         "group, but the group at row " +
         std::to_string(row) + ", columns " + std::to_string(col) + ".." + std::to_string(col + 3) +
         " does not (corrupt or foreign metadata)";
}

}  // namespace prunekit
