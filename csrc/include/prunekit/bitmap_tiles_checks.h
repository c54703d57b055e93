// Argument checks of the tiled bitmap ops (prunekit/bitmap_tiles.h), shared by the CPU and CUDA
// glue so that both backends accept and reject the same inputs: the tensors of a tiled weight and
// of a bitmap-format weight, the inputs of the linear and 1x1 convolution ops, and the kernel
// names. Data checks (marks against offsets) run in each backend.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "prunekit/bitmap_tiles.h"
#include "prunekit/check.h"

namespace prunekit {

// Rows and columns at most: far above any layer, low enough that tile and word counts and every
// flat index stay in int64 range.
constexpr int64_t kTilesMaxExtent = int64_t(1) << 40;

inline void check_tiles_extent(const char* op, const char* what, int64_t value) {
  TORCH_CHECK_VALUE(value >= 1 && value <= kTilesMaxExtent, "prunekit.", op, ": ", what, " must be in [1, ",
                    kTilesMaxExtent, "], but got ", value);
}

inline void check_same_device_as(const char* op, const at::Tensor& t, const char* arg, const at::Tensor& first,
                                 const char* first_arg) {
  TORCH_CHECK(t.device() == first.device(), "prunekit.", op, ": argument '", arg, "' must be on the device of '",
              first_arg, "' (", first.device(), "), but got ", t.device());
}

// The bitmap format's tensors as the conversion to tiles reads them: values (nnz,) fp32 / bf16 /
// fp16, bitmap (rows, ceil(cols / 16)) int16, row_offsets (rows + 1,) int64, all on one device.
inline tiles::Grid check_bitmap_source(const char* op, const at::Tensor& values, const at::Tensor& bitmap,
                                       const at::Tensor& row_offsets, int64_t cols) {
  check_dtype(values, op, "values", {at::kFloat, at::kBFloat16, at::kHalf});
  check_dim(values, op, "values", 1);
  check_contiguous(values, op, "values");
  check_dtype(bitmap, op, "bitmap", {at::kShort});
  check_dim(bitmap, op, "bitmap", 2);
  check_contiguous(bitmap, op, "bitmap");
  check_dtype(row_offsets, op, "row_offsets", {at::kLong});
  check_dim(row_offsets, op, "row_offsets", 1);
  check_contiguous(row_offsets, op, "row_offsets");
  check_same_device_as(op, bitmap, "bitmap", values, "values");
  check_same_device_as(op, row_offsets, "row_offsets", values, "values");
  check_tiles_extent(op, "argument 'cols'", cols);
  check_tiles_extent(op, "the number of rows of 'bitmap'", bitmap.size(0));
  const tiles::Grid grid = tiles::tile_grid(bitmap.size(0), cols);
  TORCH_CHECK_VALUE(bitmap.size(1) == grid.words, "prunekit.", op, ": argument 'bitmap' must have ", grid.words,
                    " columns (ceil(", cols, " / 16)), but got ", bitmap.size(1));
  TORCH_CHECK_VALUE(row_offsets.size(0) == grid.rows + 1, "prunekit.", op, ": argument 'row_offsets' must have ",
                    grid.rows + 1, " entries (rows + 1), but got ", row_offsets.size(0));
  return grid;
}

// A tiled weight of (rows, cols): tile_values (size,) fp32 / bf16 / fp16, tile_bitmap (panels,
// chunks, 16, 4) int16, tile_offsets (panels * chunks + 1,) int64, all contiguous on one device.
inline tiles::Grid check_tiles_weight(const char* op, const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                                      const at::Tensor& tile_offsets, int64_t rows, int64_t cols) {
  check_tiles_extent(op, "the number of rows", rows);
  check_tiles_extent(op, "the number of columns", cols);
  const tiles::Grid grid = tiles::tile_grid(rows, cols);
  check_dtype(tile_values, op, "tile_values", {at::kFloat, at::kBFloat16, at::kHalf});
  check_dim(tile_values, op, "tile_values", 1);
  check_contiguous(tile_values, op, "tile_values");
  check_dtype(tile_bitmap, op, "tile_bitmap", {at::kShort});
  const std::vector<int64_t> bitmap_shape{grid.panels, grid.chunks, tiles::kTileRows, tiles::kTileWords};
  TORCH_CHECK_VALUE(
      tile_bitmap.dim() == 4, "prunekit.", op, ": argument 'tile_bitmap' must be 4-D of shape ",
      at::IntArrayRef(bitmap_shape), " for a ", rows, "x", cols, " weight, but got a ", tile_bitmap.dim(),
      "-D tensor of shape ", tile_bitmap.sizes(),
      tile_bitmap.dim() == 2 ? " (a bitmap-format weight? prunekit.ops.bitmap_to_tiles converts it)" : "");
  TORCH_CHECK_VALUE(tile_bitmap.sizes() == at::IntArrayRef(bitmap_shape), "prunekit.", op,
                    ": argument 'tile_bitmap' must have shape ", at::IntArrayRef(bitmap_shape), " for a ", rows, "x",
                    cols, " weight, but got ", tile_bitmap.sizes());
  check_contiguous(tile_bitmap, op, "tile_bitmap");
  check_dtype(tile_offsets, op, "tile_offsets", {at::kLong});
  check_dim(tile_offsets, op, "tile_offsets", 1);
  TORCH_CHECK_VALUE(tile_offsets.size(0) == grid.panels * grid.chunks + 1, "prunekit.", op,
                    ": argument 'tile_offsets' must have ", grid.panels * grid.chunks + 1,
                    " entries (tiles + 1), but got ", tile_offsets.size(0));
  check_contiguous(tile_offsets, op, "tile_offsets");
  check_same_device_as(op, tile_bitmap, "tile_bitmap", tile_values, "tile_values");
  check_same_device_as(op, tile_offsets, "tile_offsets", tile_values, "tile_values");
  return grid;
}

// What computes a tiled linear / 1x1 convolution (see prunekit/bitmap_tiles_cuda.h): "auto", the
// two decode kernels, the pipelined GEMM, or an exact expansion to dense and torch's matmul.
enum class TilesKernelChoice : int { kAuto, kSimt, kMma, kGemm, kDense };

inline TilesKernelChoice parse_tiles_kernel(const char* op, c10::string_view name, bool conv) {
  const std::string text(name.data(), name.size());
  if (text == "auto") return TilesKernelChoice::kAuto;
  if (text == "simt") return TilesKernelChoice::kSimt;
  if (text == "mma" && !conv) return TilesKernelChoice::kMma;
  if (text == "gemm") return TilesKernelChoice::kGemm;
  if (text == "dense") return TilesKernelChoice::kDense;
  TORCH_CHECK_VALUE(false, "prunekit.", op, ": argument 'kernel' must be one of ",
                    conv ? "'auto', 'simt', 'gemm', 'dense'" : "'auto', 'simt', 'mma', 'gemm', 'dense'", ", but got '",
                    text, "'");
}

// The tensor-core kernels multiply 16-bit values.
inline void check_tiles_kernel_dtype(const char* op, TilesKernelChoice kernel, const at::Tensor& tile_values) {
  if (kernel != TilesKernelChoice::kMma && kernel != TilesKernelChoice::kGemm) return;
  TORCH_CHECK_VALUE(tile_values.scalar_type() != at::kFloat, "prunekit.", op, ": kernel '",
                    kernel == TilesKernelChoice::kMma ? "mma" : "gemm",
                    "' runs float16 and bfloat16 weights on tensor cores, but 'tile_values' is float32 (use 'simt', "
                    "'dense' or 'auto')");
}

inline void check_tiles_bias(const char* op, const std::optional<at::Tensor>& bias, int64_t rows, const at::Tensor& x) {
  if (!bias.has_value()) return;
  check_dtype(*bias, op, "bias", {at::kFloat, at::kBFloat16, at::kHalf});
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == rows, "prunekit.", op, ": argument 'bias' must have shape [",
                    rows, "], but got ", bias->sizes());
  check_same_device_as(op, *bias, "bias", x, "x");
}

// x of a tiled linear: (..., in_features) in the values' dtype, on their device. Returns the
// batch (rows of x) and the output shape.
inline std::pair<int64_t, std::vector<int64_t>> check_tiles_linear_input(const char* op, const at::Tensor& x,
                                                                         const at::Tensor& tile_values,
                                                                         int64_t in_features, int64_t out_features) {
  check_min_dim(x, op, "x", 1);
  TORCH_CHECK_VALUE(x.scalar_type() == tile_values.scalar_type(), "prunekit.", op,
                    ": argument 'x' must have the dtype of 'tile_values' (", tile_values.scalar_type(), "), but got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(x.size(-1) == in_features, "prunekit.", op,
                    ": the last dimension of 'x' must be in_features=", in_features, ", but got shape ", x.sizes());
  check_same_device_as(op, tile_values, "tile_values", x, "x");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  return {x.numel() / in_features, out_shape};
}

// x of a tiled 1x1 convolution: (N, C, H, W) with C the weight's columns, in the values' dtype, on
// their device; activation 0 (none), 1 (relu) or 2 (relu6).
inline void check_tiles_conv_input(const char* op, const at::Tensor& x, const at::Tensor& tile_values,
                                   int64_t in_channels, int64_t activation) {
  check_dim(x, op, "x", 4);
  TORCH_CHECK_VALUE(x.scalar_type() == tile_values.scalar_type(), "prunekit.", op,
                    ": argument 'x' must have the dtype of 'tile_values' (", tile_values.scalar_type(), "), but got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) == in_channels, "prunekit.", op, ": dimension 1 of 'x' must be in_channels=", in_channels,
                    ", but got shape ", x.sizes());
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 2, "prunekit.", op,
                    ": argument 'activation' must be 0 (none), 1 (relu) or 2 (relu6), but got ", activation);
  check_same_device_as(op, tile_values, "tile_values", x, "x");
}

inline std::string tile_name(int64_t tile, const tiles::Grid& grid) {
  return "tile " + std::to_string(tile) + " (panel " + std::to_string(tile / grid.chunks) + ", chunk " +
         std::to_string(tile % grid.chunks) + ")";
}

}  // namespace prunekit
