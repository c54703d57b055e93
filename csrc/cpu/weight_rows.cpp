#include "weight_rows.h"

#include "prunekit/check.h"

namespace prunekit {

using cpu::Status;

void check_row_offset_ends(const char* op, const WeightRows& weight) {
  const int64_t first = weight.offsets[0], last = weight.offsets[weight.rows];
  TORCH_CHECK_VALUE(first == 0 && last == weight.nnz, "prunekit.", op,
                    ": argument 'row_offsets' must start at 0 and end at values.numel()=", weight.nnz, ", but got ",
                    first, " and ", last, " (truncated or mismatched buffers?)");
}

[[noreturn]] void raise_row_offsets_error(const char* op, const WeightRows& weight) {
  const int64_t* offsets = weight.offsets;
  for (int64_t r = 0; r < weight.rows; ++r) {
    TORCH_CHECK_VALUE(offsets[r + 1] >= offsets[r], "prunekit.", op,
                      ": argument 'row_offsets' must be non-decreasing, but entry ", r + 1, " (", offsets[r + 1],
                      ") is below entry ", r, " (", offsets[r], ")");
  }
  check_row_offset_ends(op, weight);
  TORCH_INTERNAL_ASSERT(false, "prunekit.", op, ": row_offsets check found no failing entry");
}

void check_row_offsets(const char* op, const WeightRows& weight) {
  check_row_offset_ends(op, weight);
  if (!row_offsets_in_order(weight, 0, weight.rows)) raise_row_offsets_error(op, weight);
}

void check_weight_tensor(const char* op, const at::Tensor& t, const char* arg,
                         std::initializer_list<at::ScalarType> dtypes, int64_t dim) {
  check_dtype(t, op, arg, dtypes);
  check_dim(t, op, arg, dim);
  check_contiguous(t, op, arg);
  TORCH_CHECK(t.device().is_cpu(), "prunekit.", op, ": the compressed weight must be on the CPU, but got ", t.device());
}

cpu::ValueType value_type(const at::Tensor& values) {
  return values.scalar_type() == at::kFloat ? cpu::ValueType::kFloat32 : cpu::ValueType::kBFloat16;
}

at::Tensor bias_as_float(const std::optional<at::Tensor>& bias, int64_t rows, const char* op) {
  if (!bias.has_value()) return at::Tensor();
  check_dtype(*bias, op, "bias", {at::kFloat, at::kBFloat16});
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == rows, "prunekit.", op, ": argument 'bias' must have shape [",
                    rows, "], but got ", bias->sizes());
  return bias->to(at::kFloat).contiguous();
}

std::pair<WeightRows, int64_t> check_bitmap_weight(const char* op, const at::Tensor& values, const at::Tensor& bitmap,
                                                   const at::Tensor& row_offsets, int64_t k) {
  check_weight_tensor(op, values, "values", {at::kFloat, at::kBFloat16}, 1);
  check_weight_tensor(op, bitmap, "bitmap", {at::kShort}, 2);
  check_weight_tensor(op, row_offsets, "row_offsets", {at::kLong}, 1);
  // The upper bound keeps ceil(k / 16) and every column index in range of int64 arithmetic.
  TORCH_CHECK_VALUE(k >= 1 && k <= kMaxColumns, "prunekit.", op, ": the number of columns must be in [1, ", kMaxColumns,
                    "], but got ", k);
  const int64_t rows = bitmap.size(0);
  TORCH_CHECK_VALUE(rows >= 1, "prunekit.", op, ": argument 'bitmap' must have at least one row, but got shape ",
                    bitmap.sizes());
  TORCH_CHECK_VALUE(bitmap.size(1) == cpu::bitmap_words(k), "prunekit.", op, ": argument 'bitmap' must have ",
                    cpu::bitmap_words(k), " columns (ceil(", k, " / 16)), but got ", bitmap.size(1));
  TORCH_CHECK_VALUE(row_offsets.size(0) == rows + 1, "prunekit.", op, ": argument 'row_offsets' must have ", rows + 1,
                    " entries (rows + 1), but got ", row_offsets.size(0));
  const WeightRows weight = weight_rows(row_offsets, values.numel());
  check_row_offset_ends(op, weight);
  return {weight, k};
}

void check_bitmap_status(const Status& status, const char* op, int64_t k) {
  TORCH_CHECK_VALUE(status.ok(), "prunekit.", op, ": the compressed weight is corrupt: row ", status.row,
                    " of 'bitmap' does not match its 'row_offsets' span or marks columns past in_features=", k,
                    " (or in_features is below the weight's columns)");
}

cpu::BitmapWeightView bitmap_view(const at::Tensor& values, const at::Tensor& bitmap, const WeightRows& weight,
                                  int64_t k) {
  return {values.data_ptr(), value_type(values), reinterpret_cast<const uint16_t*>(bitmap.data_ptr<int16_t>()),
          weight.offsets,    weight.rows,        k};
}

void validate_bitmap(const char* op, const cpu::BitmapWeightView& view, const WeightRows& weight) {
  check_bitmap_status(
      run_weight_rows(op, weight, 64,
                      [&](int64_t begin, int64_t end) { return cpu::bitmap_validate_scalar(view, {begin, end}); }),
      op, view.cols);
}

}  // namespace prunekit
