// CPU impls of the sparse linear ops, the weight in the bitmap format (sparse_linear) or in CSR16
// (sparse_linear_csr16). Batch <= 4 runs the bandwidth-bound GEMV kernels; larger batches run the
// SpMM kernels on x^T (the (channels, columns) layout they share with the 1x1 convolution).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "prunekit/check.h"
#include "prunekit/half.h"
#include "prunekit/kernel_config.h"
#include "prunekit/kernels_cpu.h"
#include "weight_rows.h"

namespace prunekit {
namespace {

using cpu::Status;

// dst (cols x rows) = src (rows x cols)^T, rows of src `ld_src` apart and of dst `ld_dst` apart:
// the selected variant's register-tile transpose over blocks of 64 rows in parallel (a strided
// at::Tensor copy runs at a few GB/s).
void transpose_into(cpu::TransposeFn transpose, const float* src, int64_t rows, int64_t cols, int64_t ld_src,
                    float* dst, int64_t ld_dst) {
  constexpr int64_t kRowsPerTask = 64;
  at::parallel_for(0, (rows + kRowsPerTask - 1) / kRowsPerTask, 1, [=](int64_t begin, int64_t end) {
    transpose(src, cols, ld_src, dst, ld_dst, {begin * kRowsPerTask, std::min(rows, end * kRowsPerTask)});
  });
}

// out (batch, rows) = the SpMM of x (batch, k) through x^T: `spmm(xt, width, stride, yt)` computes
// yt (rows, width) from xt (k, width), both with rows `stride` apart, over a range of rows.
// - The stride is a whole number of 64-byte lines: with rows of x^T at an odd distance most of
//   the SpMM's vector loads straddle two lines.
// - For kernels without masked vectors (`lanes` > 1: the vector-extension SpMM runs a tile
//   narrower than one vector in scalar code, several times slower) the width is the batch rounded
//   up to whole vectors, the extra columns of x^T zero.
template <typename Spmm>
Status spmm_through_transpose(const char* op, const WeightRows& weight, const float* x, int64_t batch, int64_t k,
                              float* out, const at::TensorOptions& options, cpu::TransposeFn transpose, int64_t lanes,
                              Spmm spmm) {
  const int64_t rows = weight.rows;
  constexpr int64_t kLineFloats = 16;
  const int64_t width = (batch + lanes - 1) / lanes * lanes;
  const int64_t stride = (width + kLineFloats - 1) / kLineFloats * kLineFloats;
  at::Tensor xt = width > batch ? at::zeros({k, stride}, options) : at::empty({k, stride}, options);
  transpose_into(transpose, x, batch, k, k, xt.data_ptr<float>(), stride);
  at::Tensor yt = at::empty({rows, stride}, options);
  const Status status = run_weight_rows(op, weight, 8, [&](int64_t begin, int64_t end) {
    return spmm(xt.data_ptr<float>(), width, stride, yt.data_ptr<float>(), begin, end);
  });
  if (!status.ok()) return status;
  transpose_into(transpose, yt.data_ptr<float>(), rows, batch, stride, out, rows);
  return status;
}

// Checks x of a linear op; returns its batch (rows of x) and the output shape.
std::pair<int64_t, std::vector<int64_t>> check_linear_input(const char* op, const at::Tensor& x, int64_t k,
                                                            int64_t rows) {
  check_dtype(x, op, "x", {at::kFloat, at::kBFloat16});
  check_min_dim(x, op, "x", 1);
  TORCH_CHECK_VALUE(x.size(-1) == k, "prunekit.", op, ": the last dimension of 'x' must be ", "in_features=", k,
                    ", but got shape ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "prunekit.", op, ": argument 'x' must be on the CPU, but got ", x.device());
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = rows;
  return {x.numel() / k, out_shape};
}

// The linear ops allocate their fp32 output in its final shape and use x's memory in place when x
// is already contiguous in the dtype a kernel reads: after a kernel has streamed its weight through
// the caches, every further at:: call (reshape, view, a no-op to()) costs microseconds.
at::Tensor contiguous_as(const at::Tensor& x, at::ScalarType dtype) {
  return x.scalar_type() == dtype && x.is_contiguous() ? x : x.to(dtype).contiguous();
}

// out (fp32) in x's dtype.
at::Tensor in_dtype_of(const at::Tensor& x, const at::Tensor& out) {
  return x.scalar_type() == out.scalar_type() ? out : out.to(x.scalar_type());
}

// The GEMVs' fp32 operands for x of either dtype. A decode step runs every layer at one row, where
// a small layer's product takes a few microseconds and each ATen conversion (x.to(), out.to())
// costs about as much: bf16 x is widened and the fp32 sums narrowed (to nearest even, as torch
// rounds) here, in this thread's scratch (kept between calls: batch x (k + rows) floats at most
// kGemvMaxBatch rows, the largest layer's).
class GemvOperands {
 public:
  GemvOperands(const at::Tensor& x, const std::vector<int64_t>& out_shape, int64_t out_numel)
      : x_(x), out_numel_(out_numel), result_(at::empty(out_shape, x.options())) {}

  // x in fp32, row-major (batch, k): x's own memory when it already is.
  const float* x32() {
    if (x_.scalar_type() == at::kFloat && x_.is_contiguous()) return x_.data_ptr<float>();
    if (x_.scalar_type() != at::kBFloat16 || !x_.is_contiguous()) {
      widened_ = x_.to(at::kFloat).contiguous();
      return widened_.data_ptr<float>();
    }
    const int64_t n = x_.numel();
    const auto* bits = reinterpret_cast<const uint16_t*>(x_.data_ptr<at::BFloat16>());
    std::vector<float>& wide = scratch().x;
    wide.resize(n);
    for (int64_t i = 0; i < n; ++i) wide[i] = bf16_to_float(bits[i]);
    return wide.data();
  }

  // Where the kernel writes its fp32 sums: the result's own memory for fp32 x. Taken after x32()
  // (a conversion there runs ATen code, which may run another op on this thread's scratch).
  float* sums() {
    if (sums_ != nullptr) return sums_;
    if (x_.scalar_type() == at::kFloat) {
      sums_ = result_.data_ptr<float>();
    } else {  // bf16: written from the sums by result()
      scratch().sums.resize(out_numel_);
      sums_ = scratch().sums.data();
    }
    return sums_;
  }

  // The output in x's dtype.
  at::Tensor result() {
    if (x_.scalar_type() == at::kFloat) return result_;
    TORCH_CHECK(sums_ != nullptr, "prunekit: internal error: GEMV result read before its sums were written");
    auto* bits = reinterpret_cast<uint16_t*>(result_.data_ptr<at::BFloat16>());
    for (int64_t i = 0; i < out_numel_; ++i) bits[i] = float_to_bf16(sums_[i]);
    return result_;
  }

 private:
  struct Scratch {
    std::vector<float> x, sums;
  };
  static Scratch& scratch() {
    thread_local Scratch buffers;
    return buffers;
  }

  const at::Tensor& x_;
  int64_t out_numel_;
  at::Tensor result_, widened_;
  float* sums_ = nullptr;
};

at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                         const at::Tensor& row_offsets, int64_t in_features, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse_linear";
  const auto [weight, k] = check_bitmap_weight(op, values, bitmap, row_offsets, in_features);
  const int64_t rows = weight.rows;
  const auto [batch, out_shape] = check_linear_input(op, x, k, rows);
  const at::Tensor bias32 = bias_as_float(bias, rows, op);
  const float* bias_ptr = bias32.defined() ? bias32.data_ptr<float>() : nullptr;
  // fp32 sums; the AMX path writes x's bf16 itself.
  const auto float_output = [&] { return at::empty(out_shape, x.options().dtype(at::kFloat)); };
  const cpu::BitmapWeightView view = bitmap_view(values, bitmap, weight, k);
  if (batch == 0) {
    validate_bitmap(op, view, weight);
    return at::empty(out_shape, x.options());
  }
  const auto type = view.value_type;
  const cpu::CpuKernelConfig& kernels = cpu::cpu_kernel_config();
  Status status;
  const auto gemv_bf16 = kernels.bitmap_bf16_gemv;
  const cpu::AmxBf16Kernels& amx = kernels.bitmap_bf16_amx;
  const bool bf16_products = gemv_bf16 && type == cpu::ValueType::kBFloat16 && x.scalar_type() == at::kBFloat16;
  if (bf16_products && batch <= kernels.bitmap_bf16_gemv_max_batch) {
    // bf16 x bf16 products are exact in fp32: no need to widen x. Batches past the GEMV's run it on
    // chunks of its batch (one weight pass each).
    const at::Tensor x16 = contiguous_as(x, at::kBFloat16);
    const auto* x_bits = reinterpret_cast<const uint16_t*>(x16.data_ptr<at::BFloat16>());
    const auto run_chunks = [&](float* sums) {
      for (int64_t first = 0; first < batch; first += cpu::kGemvMaxBatch) {
        const cpu::GemvBf16Args args{x_bits + first * k, std::min(cpu::kGemvMaxBatch, batch - first), bias_ptr,
                                     sums + first * rows};
        status = run_weight_rows(op, weight, 16,
                                 [&](int64_t begin, int64_t end) { return gemv_bf16(view, args, {begin, end}); });
        check_bitmap_status(status, op, k);
      }
    };
    if (batch > cpu::kGemvMaxBatch) {  // past the GEMV operands' scratch: the fp32 sums in a tensor
      at::Tensor out = float_output();
      run_chunks(out.data_ptr<float>());
      return in_dtype_of(x, out);
    }
    GemvOperands operands(x, out_shape, batch * rows);
    run_chunks(operands.sums());
    return operands.result();
  }
  if (batch > cpu::kGemvMaxBatch && type == cpu::ValueType::kBFloat16 && x.scalar_type() == at::kBFloat16 && amx.spmm) {
    // bf16 x bf16 on AMX tiles: x packed once into the B-tile layout, weight rows expanded
    // block by block inside the kernel.
    const at::Tensor x16 = contiguous_as(x, at::kBFloat16);
    const auto* x_bits = reinterpret_cast<const uint16_t*>(x16.data_ptr<at::BFloat16>());
    at::Tensor packed = at::empty({amx.packed_x_elements(batch, k)}, x.options().dtype(at::kShort));
    auto* packed_bits = reinterpret_cast<uint16_t*>(packed.data_ptr<int16_t>());
    const int64_t chunks = (k + 31) / 32;
    at::parallel_for(0, chunks, 16,
                     [&](int64_t begin, int64_t end) { amx.pack_x(x_bits, batch, k, packed_bits, begin, end); });
    at::Tensor out = at::empty(out_shape, x.options());  // bf16, rounded in the kernel as torch rounds
    const cpu::AmxSpmmArgs args{packed_bits, batch, bias_ptr, out.data_ptr(), cpu::ValueType::kBFloat16};
    status =
        run_weight_rows(op, weight, 32, [&](int64_t begin, int64_t end) { return amx.spmm(view, args, {begin, end}); });
    check_bitmap_status(status, op, k);
    return out;
  }
  if (batch <= cpu::kGemvMaxBatch) {
    const auto gemv = kernels.bitmap_gemv;
    GemvOperands operands(x, out_shape, batch * rows);
    const cpu::GemvArgs args{operands.x32(), batch, bias_ptr, operands.sums()};
    status =
        run_weight_rows(op, weight, 16, [&](int64_t begin, int64_t end) { return gemv(view, args, {begin, end}); });
    check_bitmap_status(status, op, k);
    return operands.result();
  }
  const at::Tensor x32 = contiguous_as(x, at::kFloat);
  at::Tensor out = float_output();
  const auto spmm = kernels.bitmap_spmm;
  status = spmm_through_transpose(
      op, weight, x32.data_ptr<float>(), batch, k, out.data_ptr<float>(), out.options(), kernels.transpose_f32,
      kernels.bitmap_spmm_lanes,
      [&](const float* xt, int64_t width, int64_t stride, float* yt, int64_t begin, int64_t end) {
        return spmm(view, {xt, stride, width, bias_ptr, cpu::Activation::kNone, yt, stride}, {begin, end});
      });
  check_bitmap_status(status, op, k);
  return in_dtype_of(x, out);
}

at::Tensor sparse_linear_csr16(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_indices,
                               const at::Tensor& row_offsets, int64_t in_features,
                               const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse_linear_csr16";
  check_weight_tensor(op, values, "values", {at::kFloat, at::kBFloat16}, 1);
  check_weight_tensor(op, col_indices, "col_indices", {at::kShort}, 1);
  TORCH_CHECK_VALUE(col_indices.numel() == values.numel(), "prunekit.", op,
                    ": argument 'col_indices' must have one entry per value (", values.numel(), "), but got ",
                    col_indices.numel());
  check_weight_tensor(op, row_offsets, "row_offsets", {at::kLong}, 1);
  TORCH_CHECK_VALUE(row_offsets.size(0) >= 2, "prunekit.", op,
                    ": argument 'row_offsets' must have rows + 1 >= 2 entries, but got ", row_offsets.size(0));
  const int64_t k = in_features;
  TORCH_CHECK_VALUE(k >= 1 && k <= cpu::kCsr16MaxColumns, "prunekit.", op, ": argument 'in_features' must be in [1, ",
                    cpu::kCsr16MaxColumns, "] (16-bit column indices), but got ", k);
  const WeightRows weight = weight_rows(row_offsets, values.numel());
  check_row_offset_ends(op, weight);
  const int64_t rows = weight.rows, *offsets = weight.offsets;
  const auto [batch, out_shape] = check_linear_input(op, x, k, rows);
  const at::Tensor bias32 = bias_as_float(bias, rows, op);
  const float* bias_ptr = bias32.defined() ? bias32.data_ptr<float>() : nullptr;
  const auto* indices = reinterpret_cast<const uint16_t*>(col_indices.data_ptr<int16_t>());
  const cpu::Csr16WeightView view{values.data_ptr(), value_type(values), indices, offsets, rows, k};
  const cpu::CpuKernelConfig& kernels = cpu::cpu_kernel_config();
  const auto corrupt = [&](int64_t row) {  // a corrupt row has an index past k, so it is not empty
    const int64_t highest = *std::max_element(indices + offsets[row], indices + offsets[row + 1]);
    TORCH_CHECK_VALUE(false, "prunekit.", op, ": the compressed weight is corrupt: row ", row,
                      " of 'col_indices' names column ", highest, ", past in_features=", k);
  };
  // Kernel statuses: kCorruptMeta names the row; anything else is a broken contract, not bad input.
  const auto raise_if_failed = [&](const Status& status) {
    TORCH_CHECK(status.ok() || status.code == cpu::StatusCode::kCorruptMeta, "prunekit.", op,
                ": internal error: the kernel refused its arguments (status ", int(status.code), ")");
    if (!status.ok()) corrupt(status.row);
  };
  if (batch == 0) {
    // No products to compute, but a corrupt weight is an error here as at any other batch.
    check_row_offsets(op, weight);
    const int64_t nnz = weight.nnz;
    const int64_t first_bad = std::find_if(indices, indices + nnz, [&](uint16_t c) { return c >= k; }) - indices;
    if (first_bad < nnz) corrupt(std::upper_bound(offsets, offsets + rows + 1, first_bad) - offsets - 1);
    return at::empty(out_shape, x.options());
  }
  if (batch <= kernels.csr16_gemv_max_batch) {
    // One pass over the weight, each nonzero's x gathered for every batch row.
    const auto gemv = kernels.csr16_gemv;
    GemvOperands operands(x, out_shape, batch * rows);
    const cpu::GemvArgs args{operands.x32(), batch, bias_ptr, operands.sums()};
    const Status status =
        run_weight_rows(op, weight, 16, [&](int64_t begin, int64_t end) { return gemv(view, args, {begin, end}); });
    raise_if_failed(status);
    return operands.result();
  }
  // Larger batches: the SpMM on x^T, each nonzero broadcast against a row of batch entries.
  at::Tensor out = at::empty(out_shape, x.options().dtype(at::kFloat));
  const at::Tensor x32 = contiguous_as(x, at::kFloat);
  const auto spmm = kernels.csr16_spmm;
  raise_if_failed(spmm_through_transpose(
      op, weight, x32.data_ptr<float>(), batch, k, out.data_ptr<float>(), out.options(), kernels.transpose_f32,
      kernels.csr16_spmm_lanes,
      [&](const float* xt, int64_t width, int64_t stride, float* yt, int64_t begin, int64_t end) {
        return spmm(view, {xt, stride, width, bias_ptr, cpu::Activation::kNone, yt, stride}, {begin, end});
      }));
  return in_dtype_of(x, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("sparse_linear", &sparse_linear);
  m.impl("sparse_linear_csr16", &sparse_linear_csr16);
}

}  // namespace prunekit
