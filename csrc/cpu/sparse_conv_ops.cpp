// CPU impl of the sparse 1x1 convolution: the bitmap SpMM on each NCHW image's (C, H*W) matrix,
// the activation fused.
#include <torch/library.h>

#include "prunekit/check.h"
#include "prunekit/kernel_config.h"
#include "prunekit/kernels_cpu.h"
#include "weight_rows.h"

namespace prunekit {
namespace {

at::Tensor sparse_conv1x1(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                          const at::Tensor& row_offsets, const std::optional<at::Tensor>& bias, int64_t activation) {
  constexpr const char* op = "sparse_conv1x1";
  check_dtype(x, op, "x", {at::kFloat});
  check_dim(x, op, "x", 4);
  check_contiguous(x, op, "x");
  TORCH_CHECK(x.device().is_cpu(), "prunekit.", op, ": argument 'x' must be on the CPU, but got ", x.device());
  const int64_t channels = x.size(1);
  const auto [weight, k] = check_bitmap_weight(op, values, bitmap, row_offsets, channels);
  const int64_t rows = weight.rows;
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 2, "prunekit.", op,
                    ": argument 'activation' must be 0 (none), 1 (relu) or 2 (relu6), but got ", activation);
  const at::Tensor bias32 = bias_as_float(bias, rows, op);
  const float* bias_ptr = bias32.defined() ? bias32.data_ptr<float>() : nullptr;
  const int64_t images = x.size(0), pixels = x.size(2) * x.size(3);
  at::Tensor out = at::empty({images, rows, x.size(2), x.size(3)}, x.options());
  const cpu::BitmapWeightView view = bitmap_view(values, bitmap, weight, k);
  if (out.numel() == 0) {
    validate_bitmap(op, view, weight);
    return out;
  }
  const auto spmm = cpu::cpu_kernel_config().bitmap_spmm;
  for (int64_t image = 0; image < images; ++image) {
    const float* in = x.data_ptr<float>() + image * channels * pixels;
    float* result = out.data_ptr<float>() + image * rows * pixels;
    const cpu::SpmmArgs args{in, pixels, pixels, bias_ptr, cpu::Activation(activation), result, pixels};
    check_bitmap_status(
        run_weight_rows(op, weight, 4, [&](int64_t begin, int64_t end) { return spmm(view, args, {begin, end}); }), op,
        k);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("sparse_conv1x1", &sparse_conv1x1); }

}  // namespace prunekit
