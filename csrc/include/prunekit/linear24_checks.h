// Argument checks of sparse_linear_24 and meta_24_to_sm90, shared by the CPU and CUDA glue so that
// both backends accept and reject the same inputs, and the dense path both fall back to.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>
#include <vector>

#include "prunekit/check.h"
#include "prunekit/format24.h"
#include "prunekit/format24_sm90.h"

namespace prunekit {

// The kernel argument: "auto" picks by batch and GPU; the others force one path (tests, and
// comparisons on one GPU). On CPU only "auto" and "dense" exist.
enum class Linear24Kernel { kAuto, kDecode, kCutlassSm80, kCutlassSm90, kDense };

inline Linear24Kernel parse_linear24_kernel(std::string_view name) {
  if (name == "auto") return Linear24Kernel::kAuto;
  if (name == "decode") return Linear24Kernel::kDecode;
  if (name == "cutlass_sm80") return Linear24Kernel::kCutlassSm80;
  if (name == "cutlass_sm90") return Linear24Kernel::kCutlassSm90;
  TORCH_CHECK_VALUE(name == "dense", "prunekit.sparse_linear_24: argument 'kernel' must be one of 'auto', 'decode', ",
                    "'cutlass_sm80', 'cutlass_sm90', 'dense', but got '", name, "'");
  return Linear24Kernel::kDense;
}

struct Linear24Shape {
  int64_t rows;              // out_features
  int64_t k;                 // in_features
  int64_t batch;             // rows of x over all leading dims
  std::vector<int64_t> out;  // (..., rows)
};

// Shape (padded rows, padded k / 8) and dtype (uint8) of the sm90 metadata buffer of a (rows, k)
// weight: CUTLASS 3's physical metadata extents.
inline std::vector<int64_t> sm90_meta_shape(int64_t rows, int64_t k) {
  return {format24::sm90::padded_rows(rows), format24::sm90::padded_cols(k) / 8};
}

inline void check_sm90_meta(const at::Tensor& meta_sm90, int64_t rows, int64_t k, const char* op) {
  TORCH_CHECK_VALUE(meta_sm90.scalar_type() == at::kByte, "prunekit.", op,
                    ": argument 'meta_sm90' must have dtype torch.uint8 (from meta_24_to_sm90), but got ",
                    meta_sm90.scalar_type());
  const auto expected = sm90_meta_shape(rows, k);
  TORCH_CHECK_VALUE(meta_sm90.sizes() == at::IntArrayRef(expected), "prunekit.", op,
                    ": argument 'meta_sm90' must have shape ", at::IntArrayRef(expected), " for a ", rows, " x ", k,
                    " weight (meta_24_to_sm90 of its meta), but got ", meta_sm90.sizes());
  check_contiguous(meta_sm90, op, "meta_sm90");
}

inline Linear24Shape check_sparse_linear_24_args(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                                 int64_t in_features, const std::optional<at::Tensor>& bias,
                                                 const std::optional<at::Tensor>& meta_sm90) {
  constexpr const char* op = "sparse_linear_24";
  check_dtype(values, op, "values", {at::kHalf, at::kBFloat16, at::kFloat});
  TORCH_CHECK_VALUE(x.scalar_type() == values.scalar_type(), "prunekit.", op,
                    ": argument 'x' must have the dtype of 'values' (", values.scalar_type(), "), but got ",
                    x.scalar_type());
  // 16-bit metadata (int16, four groups per element) for fp16, bf16 and fp32 values; an int32
  // meta is the int8 layout, which this op does not run.
  TORCH_CHECK_VALUE(meta.scalar_type() == at::kShort, "prunekit.", op,
                    ": argument 'meta' must have dtype torch.int16 (compress_24's meta for ", values.scalar_type(),
                    " values), but got ", meta.scalar_type());
  check_dim(values, op, "values", 2);
  check_dim(meta, op, "meta", 2);
  check_min_dim(x, op, "x", 1);
  check_contiguous(values, op, "values");
  check_contiguous(meta, op, "meta");
  check_nonempty(values, op, "values");
  check_same_device(x, "x", values, "values", op);
  check_same_device(values, "values", meta, "meta", op);
  const int64_t rows = values.size(0), k = 2 * values.size(1);
  TORCH_CHECK_VALUE(in_features == k, "prunekit.", op, ": argument 'in_features' must be twice the columns of ",
                    "'values' (", k, "), but got ", in_features);
  TORCH_CHECK_VALUE(x.size(-1) == k, "prunekit.", op, ": the last dimension of 'x' must be in_features=", k,
                    ", but got shape ", x.sizes());
  const auto layout = format24::layout_for_element_bytes(2);
  check_multiple(rows, layout.row_alignment, op, "the number of rows of 'values' (out_features)");
  check_multiple(k, layout.col_alignment, op, "in_features");
  const std::vector<int64_t> expected_meta{rows, k / (4 * layout.groups_per_meta)};
  TORCH_CHECK_VALUE(meta.sizes() == at::IntArrayRef(expected_meta), "prunekit.", op,
                    ": argument 'meta' must have shape ", at::IntArrayRef(expected_meta), " for values of shape ",
                    values.sizes(), " (compress_24's layout), but got ", meta.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_device(x, "x", *bias, "bias", op);
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type(), "prunekit.", op,
                      ": argument 'bias' must have the dtype of 'x' (", x.scalar_type(), "), but got ",
                      bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == rows, "prunekit.", op, ": argument 'bias' must have shape [",
                      rows, "], but got ", bias->sizes());
  }
  if (meta_sm90.has_value() && meta_sm90->defined()) {
    check_same_device(values, "values", *meta_sm90, "meta_sm90", op);
    check_sm90_meta(*meta_sm90, rows, k, op);
  }
  std::vector<int64_t> out(x.sizes().begin(), x.sizes().end());
  out.back() = rows;
  return {rows, k, k == 0 ? 0 : x.numel() / k, out};
}

inline void check_meta_24_to_sm90_args(const at::Tensor& meta) {
  constexpr const char* op = "meta_24_to_sm90";
  TORCH_CHECK_VALUE(meta.scalar_type() == at::kShort, "prunekit.", op,
                    ": argument 'meta' must have dtype torch.int16 (compress_24's meta of fp16 or bf16 values), "
                    "but got ",
                    meta.scalar_type());
  check_dim(meta, op, "meta", 2);
  check_contiguous(meta, op, "meta");
  check_nonempty(meta, op, "meta");
  check_multiple(meta.size(0), 32, op, "the number of rows of 'meta'");
  check_multiple(meta.size(1), 2, op, "the number of columns of 'meta'");
}

// y = x W^T + b with W decompressed: the CPU implementation, and the CUDA one where no sparse
// kernel applies (fp32 values). fp32 products and sums, result in x's dtype, as the reference.
inline at::Tensor linear24_dense(const at::Tensor& x2d, const at::Tensor& values, const at::Tensor& meta,
                                 const std::optional<at::Tensor>& bias) {
  static const auto decompress = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("prunekit::decompress_24", "")
                                     .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  const at::Tensor weight = decompress.call(values, meta).to(at::kFloat);
  std::optional<at::Tensor> bias_float;
  if (bias.has_value() && bias->defined()) bias_float = bias->to(at::kFloat);
  return at::linear(x2d.to(at::kFloat), weight, bias_float).to(x2d.scalar_type());
}

}  // namespace prunekit
