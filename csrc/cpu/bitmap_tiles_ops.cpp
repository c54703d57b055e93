// CPU impls of the tiled bitmap ops: the exact conversions from and to the bitmap format, the
// dense expansion, and the tiled linear / 1x1 convolution through the CPU walk of the CUDA
// kernels' decode (prunekit/bitmap_tiles_cpu.h). The CPU's fast kernels take the bitmap format;
// these exist so that the CUDA layout and its decode are tested, and run, on any machine.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "parallel_rows.h"
#include "prunekit/bitmap_tiles_checks.h"
#include "prunekit/bitmap_tiles_cpu.h"
#include "weight_rows.h"

namespace prunekit {
namespace {

using cpu::Status;

constexpr int64_t kPanelGrain = 4;

ScoreType element_type(const at::Tensor& values) {
  switch (values.scalar_type()) {
    case at::kBFloat16: return ScoreType::kBFloat16;
    case at::kHalf: return ScoreType::kFloat16;
    default: return ScoreType::kFloat32;
  }
}

cpu::TilesView tiles_view(const at::Tensor& tile_values, const at::Tensor& tile_bitmap, const at::Tensor& tile_offsets,
                          const tiles::Grid& grid) {
  return {tile_values.data_ptr(),
          int(tile_values.element_size()),
          tile_values.numel(),
          reinterpret_cast<const uint16_t*>(tile_bitmap.data_ptr<int16_t>()),
          tile_offsets.data_ptr<int64_t>(),
          grid};
}

[[noreturn]] void raise_bad_tile(const char* op, const Status& status, const tiles::Grid& grid) {
  TORCH_CHECK_VALUE(false, "prunekit.", op,
                    ": the tiled weight is corrupt: ", tile_name(status.row * grid.chunks + status.col, grid),
                    " has a run that does not match its marks or lies outside 'tile_values', or marks padding "
                    "rows or columns");
}

void check_tile_offset_ends(const char* op, const cpu::TilesView& view) {
  const int64_t tiles_count = view.grid.panels * view.grid.chunks;
  const int64_t first = view.tile_offsets[0], last = view.tile_offsets[tiles_count];
  TORCH_CHECK_VALUE(first == 0 && last == view.size, "prunekit.", op,
                    ": argument 'tile_offsets' must start at 0 and end at tile_values.numel()=", view.size,
                    ", but got ", first, " and ", last, " (truncated or mismatched buffers?)");
}

// Every check of a tiled weight's data (what the conversions back rely on).
void validate_tiles(const char* op, const cpu::TilesView& view) {
  check_tile_offset_ends(op, view);
  const Status status = run_rows(view.grid.panels, kPanelGrain, [&](int64_t begin, int64_t end) {
    return cpu::bitmap_tiles_validate_scalar(view, {begin, end});
  });
  if (!status.ok()) raise_bad_tile(op, status, view.grid);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmap_to_tiles(const at::Tensor& values, const at::Tensor& bitmap,
                                                               const at::Tensor& row_offsets, int64_t cols) {
  constexpr const char* op = "bitmap_to_tiles";
  const tiles::Grid grid = check_bitmap_source(op, values, bitmap, row_offsets, cols);
  const WeightRows weight = weight_rows(row_offsets, values.numel());
  check_row_offset_ends(op, weight);
  const auto* bits = reinterpret_cast<const uint16_t*>(bitmap.data_ptr<int16_t>());
  // The values are not read by the check: the fp32/bf16 tag only sizes them.
  const cpu::BitmapWeightView rows_view{
      values.data_ptr(),
      values.element_size() == 4 ? cpu::ValueType::kFloat32 : cpu::ValueType::kBFloat16,
      bits,
      weight.offsets,
      grid.rows,
      cols};
  validate_bitmap(op, rows_view, weight);
  const cpu::BitmapSource src{values.data_ptr(), int(values.element_size()), bits, weight.offsets, grid};
  const int64_t tiles_count = grid.panels * grid.chunks;
  std::vector<int64_t> marks(tiles_count);
  at::parallel_for(0, grid.panels, kPanelGrain, [&](int64_t begin, int64_t end) {
    cpu::bitmap_tiles_marks_scalar(src, marks.data(), {begin, end});
  });
  at::Tensor tile_offsets = at::empty({tiles_count + 1}, row_offsets.options());
  int64_t* offsets = tile_offsets.data_ptr<int64_t>();
  offsets[0] = 0;
  for (int64_t t = 0; t < tiles_count; ++t) offsets[t + 1] = offsets[t] + tiles::run_length(marks[t]);
  at::Tensor tile_values = at::empty({offsets[tiles_count]}, values.options());
  at::Tensor tile_bitmap = at::empty({grid.panels, grid.chunks, tiles::kTileRows, tiles::kTileWords}, bitmap.options());
  auto* tile_bits = reinterpret_cast<uint16_t*>(tile_bitmap.data_ptr<int16_t>());
  at::parallel_for(0, grid.panels, kPanelGrain, [&](int64_t begin, int64_t end) {
    cpu::bitmap_tiles_pack_scalar(src, offsets, tile_values.data_ptr(), tile_bits, {begin, end});
  });
  return {tile_values, tile_bitmap, tile_offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiles_to_bitmap(const at::Tensor& tile_values,
                                                               const at::Tensor& tile_bitmap,
                                                               const at::Tensor& tile_offsets, int64_t rows,
                                                               int64_t cols) {
  constexpr const char* op = "tiles_to_bitmap";
  const tiles::Grid grid = check_tiles_weight(op, tile_values, tile_bitmap, tile_offsets, rows, cols);
  const cpu::TilesView view = tiles_view(tile_values, tile_bitmap, tile_offsets, grid);
  validate_tiles(op, view);
  at::Tensor row_offsets = at::empty({rows + 1}, tile_offsets.options());
  int64_t* offsets = row_offsets.data_ptr<int64_t>();
  at::parallel_for(0, grid.panels, kPanelGrain, [&](int64_t begin, int64_t end) {
    cpu::bitmap_tiles_row_marks_scalar(view, offsets + 1, {begin, end});
  });
  offsets[0] = 0;
  for (int64_t r = 0; r < rows; ++r) offsets[r + 1] += offsets[r];
  at::Tensor values = at::empty({offsets[rows]}, tile_values.options());
  at::Tensor bitmap = at::empty({rows, grid.words}, tile_bitmap.options());
  auto* bits = reinterpret_cast<uint16_t*>(bitmap.data_ptr<int16_t>());
  at::parallel_for(0, grid.panels, kPanelGrain, [&](int64_t begin, int64_t end) {
    cpu::bitmap_tiles_unpack_scalar(view, offsets, values.data_ptr(), bits, {begin, end});
  });
  return {values, bitmap, row_offsets};
}

at::Tensor decompress_tiles(const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                            const at::Tensor& tile_offsets, int64_t rows, int64_t cols) {
  constexpr const char* op = "decompress_tiles";
  const tiles::Grid grid = check_tiles_weight(op, tile_values, tile_bitmap, tile_offsets, rows, cols);
  const cpu::TilesView view = tiles_view(tile_values, tile_bitmap, tile_offsets, grid);
  validate_tiles(op, view);
  at::Tensor dense = at::empty({rows, cols}, tile_values.options());
  at::parallel_for(0, grid.panels, kPanelGrain, [&](int64_t begin, int64_t end) {
    cpu::bitmap_tiles_dense_scalar(view, dense.data_ptr(), {begin, end});
  });
  return dense;
}

// The walk over every panel of one (image's) product, fp32 x and y.
void walk(const char* op, const cpu::TilesView& view, ScoreType type, const cpu::TilesOperands& operands,
          cpu::TilesWalk how) {
  const Status status = run_rows(view.grid.panels, kPanelGrain, [&](int64_t begin, int64_t end) {
    return cpu::bitmap_tiles_linear_scalar(view, type, operands, how, {begin, end});
  });
  if (!status.ok()) raise_bad_tile(op, status, view.grid);
}

cpu::TilesWalk walk_for(TilesKernelChoice kernel) {
  return kernel == TilesKernelChoice::kMma || kernel == TilesKernelChoice::kGemm ? cpu::TilesWalk::kMma
                                                                                 : cpu::TilesWalk::kSimt;
}

at::Tensor sparse_linear_tiles(const at::Tensor& x, const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                               const at::Tensor& tile_offsets, int64_t out_features, int64_t in_features,
                               const std::optional<at::Tensor>& bias, c10::string_view kernel_name) {
  constexpr const char* op = "sparse_linear_tiles";
  const tiles::Grid grid = check_tiles_weight(op, tile_values, tile_bitmap, tile_offsets, out_features, in_features);
  const TilesKernelChoice kernel = parse_tiles_kernel(op, kernel_name, false);
  check_tiles_kernel_dtype(op, kernel, tile_values);
  const auto [batch, out_shape] = check_tiles_linear_input(op, x, tile_values, in_features, out_features);
  check_tiles_bias(op, bias, out_features, x);
  const cpu::TilesView view = tiles_view(tile_values, tile_bitmap, tile_offsets, grid);
  check_tile_offset_ends(op, view);
  const at::Tensor bias32 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  if (batch == 0 || kernel == TilesKernelChoice::kDense) {
    const at::Tensor dense = decompress_tiles(tile_values, tile_bitmap, tile_offsets, out_features, in_features);
    if (batch == 0) return at::empty(out_shape, x.options());
    return at::linear(x.to(at::kFloat), dense.to(at::kFloat), bias32).to(x.scalar_type());
  }
  const at::Tensor x32 = x.reshape({batch, in_features}).to(at::kFloat).contiguous();
  at::Tensor y32 = at::empty({batch, out_features}, x32.options());
  const cpu::TilesOperands operands{x32.data_ptr<float>(),
                                    batch,
                                    in_features,
                                    1,
                                    bias32.defined() ? bias32.data_ptr<float>() : nullptr,
                                    cpu::Activation::kNone,
                                    y32.data_ptr<float>(),
                                    out_features,
                                    1};
  walk(op, view, element_type(tile_values), operands, walk_for(kernel));
  return y32.to(x.scalar_type()).view(out_shape);
}

at::Tensor sparse_conv1x1_tiles(const at::Tensor& x, const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                                const at::Tensor& tile_offsets, int64_t out_channels, int64_t in_channels,
                                const std::optional<at::Tensor>& bias, int64_t activation,
                                c10::string_view kernel_name) {
  constexpr const char* op = "sparse_conv1x1_tiles";
  const tiles::Grid grid = check_tiles_weight(op, tile_values, tile_bitmap, tile_offsets, out_channels, in_channels);
  const TilesKernelChoice kernel = parse_tiles_kernel(op, kernel_name, true);
  check_tiles_kernel_dtype(op, kernel, tile_values);
  check_tiles_conv_input(op, x, tile_values, in_channels, activation);
  check_tiles_bias(op, bias, out_channels, x);
  const cpu::TilesView view = tiles_view(tile_values, tile_bitmap, tile_offsets, grid);
  check_tile_offset_ends(op, view);
  const int64_t images = x.size(0), pixels = x.size(2) * x.size(3);
  const at::Tensor bias32 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  if (images * pixels == 0 || kernel == TilesKernelChoice::kDense) {
    const at::Tensor dense = decompress_tiles(tile_values, tile_bitmap, tile_offsets, out_channels, in_channels);
    if (images * pixels == 0) return at::empty({images, out_channels, x.size(2), x.size(3)}, x.options());
    at::Tensor y = at::conv2d(x.to(at::kFloat), dense.to(at::kFloat).view({out_channels, in_channels, 1, 1}), bias32);
    if (activation == 1) y = at::relu(y);
    if (activation == 2) y = at::hardtanh(y, 0.0, 6.0);
    return y.to(x.scalar_type());
  }
  const at::Tensor x32 = x.to(at::kFloat).contiguous();
  at::Tensor y32 = at::empty({images, out_channels, x.size(2), x.size(3)}, x32.options());
  for (int64_t image = 0; image < images; ++image) {
    const cpu::TilesOperands operands{x32.data_ptr<float>() + image * in_channels * pixels,
                                      pixels,
                                      1,
                                      pixels,
                                      bias32.defined() ? bias32.data_ptr<float>() : nullptr,
                                      static_cast<cpu::Activation>(activation),
                                      y32.data_ptr<float>() + image * out_channels * pixels,
                                      1,
                                      pixels};
    walk(op, view, element_type(tile_values), operands, walk_for(kernel));
  }
  return y32.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("bitmap_to_tiles", &bitmap_to_tiles);
  m.impl("tiles_to_bitmap", &tiles_to_bitmap);
  m.impl("decompress_tiles", &decompress_tiles);
  m.impl("sparse_linear_tiles", &sparse_linear_tiles);
  m.impl("sparse_conv1x1_tiles", &sparse_conv1x1_tiles);
}

}  // namespace prunekit
