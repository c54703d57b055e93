// Torch-free CPU code of the tiled bitmap layout (prunekit/bitmap_tiles.h): the exact conversions
// from and to the bitmap format, the expansion to dense, and a scalar walk of the tiles that
// decodes them exactly as the CUDA kernels do (the SIMT bit loop, or the mma fragments built from
// the warp's scan and shuffles), so the CPU tests cover the CUDA kernels' index math. Each function
// works on a range of panels (ATen glue splits them over threads).
#pragma once

#include <cstdint>

#include "prunekit/bitmap_tiles.h"
#include "prunekit/dtypes.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {

// A tiled weight as the functions read it: `size` values of `element_bytes` (2 or 4) each.
struct TilesView {
  const void* values;
  int element_bytes;
  int64_t size;
  const uint16_t* tile_bitmap;
  const int64_t* tile_offsets;
  tiles::Grid grid;
};

// A bitmap-format weight (values, bitmap (rows, words), row_offsets (rows + 1)) of any 2- or
// 4-byte element; the caller has checked it (bitmap_validate_scalar).
struct BitmapSource {
  const void* values;
  int element_bytes;
  const uint16_t* bitmap;
  const int64_t* row_offsets;
  tiles::Grid grid;
};

// ---- bitmap format -> tiles ----
// marks[t] for the tiles of the panels in `range` (marks has panels * chunks entries).
void bitmap_tiles_marks_scalar(const BitmapSource& src, int64_t* marks, RowRange panels);
// Fills the tiles of the panels in `range`: tile_offsets (from run_length of the marks) given;
// writes their bitmap words, runs and run padding.
void bitmap_tiles_pack_scalar(const BitmapSource& src, const int64_t* tile_offsets, void* tile_values,
                              uint16_t* tile_bitmap, RowRange panels);

// ---- tiles -> bitmap format / dense ----
// Checks the tiles of the panels in `range`: each run fits its marks and the values
// (tiles::run_fits), no mark in padding rows or columns. kCorruptMeta with row = panel, col =
// chunk of the first bad tile (the caller checks tile_offsets[0] == 0 and the last == size).
Status bitmap_tiles_validate_scalar(const TilesView& tiles, RowRange panels);
// row_marks[r] for the weight rows of the panels in `range`.
void bitmap_tiles_row_marks_scalar(const TilesView& tiles, int64_t* row_marks, RowRange panels);
// Writes the bitmap-format rows of the panels in `range` (row_offsets given).
void bitmap_tiles_unpack_scalar(const TilesView& tiles, const int64_t* row_offsets, void* values, uint16_t* bitmap,
                                RowRange panels);
// Writes rows of the dense (rows, cols) matrix of the panels in `range` (zeros included).
void bitmap_tiles_dense_scalar(const TilesView& tiles, void* dense, RowRange panels);

// ---- the CUDA kernels' decode, walked on the CPU ----
enum class TilesWalk : int {
  kSimt = 0,  // each lane's marked columns in order from the scan (bitmap_tiles_linear_simt)
  kMma = 1,   // mma.m16n8k16 A fragments from shuffled packed words (16-bit values only)
};
// Y[n][m] = act(sum_k W[m][k] X[n][k] + bias[m]) for the weight rows of the panels in `range` and
// n < batch; X element (n, k) at x[n * x_stride_n + k * x_stride_k] (fp32), Y element (n, m) at
// y[n * y_stride_n + m * y_stride_m] (fp32). Serves linear (x (batch, k)) and 1x1 convolution
// (one image: x (k, pixels)). A tile whose run does not fit stops with kCorruptMeta (row =
// panel, col = chunk) before its values are read.
struct TilesOperands {
  const float* x;
  int64_t batch;
  int64_t x_stride_n;
  int64_t x_stride_k;
  const float* bias;
  Activation activation;
  float* y;
  int64_t y_stride_n;
  int64_t y_stride_m;
};
Status bitmap_tiles_linear_scalar(const TilesView& tiles, ScoreType value_type, const TilesOperands& operands,
                                  TilesWalk walk, RowRange panels);

}  // namespace prunekit::cpu
