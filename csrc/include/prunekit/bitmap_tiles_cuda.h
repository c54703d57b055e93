// Torch-free CUDA launchers of the tiled bitmap layout (prunekit/bitmap_tiles.h): conversions
// from and to the bitmap format, the dense expansion, and the sparse GEMMs. Raw device pointers,
// the caller's stream; data errors lower a device uint64 (set to prunekit::cuda::kNoError by the
// caller) with atomicMin, as the other CUDA kernels do (prunekit/kernels_cuda.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "prunekit/bitmap_tiles.h"
#include "prunekit/dtypes.h"

namespace prunekit::cuda {

// ---- conversions (one-off, so written for clarity: a thread per row, tile or row segment) ----
// Rows of a bitmap-format weight whose marks differ from their row_offsets span or that mark
// columns past cols: error_index lowered to the first such row.
cudaError_t bitmap_tiles_check_rows(const uint16_t* bitmap, const int64_t* row_offsets, tiles::Grid grid,
                                    unsigned long long* error_index, cudaStream_t stream);
// marks (panels * 16, chunks) int32: the marks of row r in chunk c (0 for padding rows), from
// the bitmap format's bitmap or from tile_bitmap.
cudaError_t bitmap_tiles_marks_from_bitmap(const uint16_t* bitmap, tiles::Grid grid, int32_t* marks,
                                           cudaStream_t stream);
cudaError_t bitmap_tiles_marks_from_tiles(const uint16_t* tile_bitmap, tiles::Grid grid, int32_t* marks,
                                          cudaStream_t stream);
// Segment (r, c), row r's marks in chunk c, lies at row_offsets[r] + row_prefix[r][c] in the
// bitmap format's values and at tile_offsets[t] + tile_prefix[r][c] in tile t's run (both
// (panels * 16, chunks) int64, from the marks).
struct TilesSegments {
  const int64_t* row_prefix;
  const int64_t* tile_prefix;
};
// Fills tile_bitmap and the runs; tile_values must be zeroed first (the run padding).
cudaError_t bitmap_tiles_pack(const void* values, int element_bytes, const uint16_t* bitmap, const int64_t* row_offsets,
                              TilesSegments segments, const int64_t* tile_offsets, tiles::Grid grid, void* tile_values,
                              uint16_t* tile_bitmap, cudaStream_t stream);
// Tiles whose run does not fit their marks or the values (`size` elements), or that mark padding:
// error_index lowered to the first such tile index.
cudaError_t bitmap_tiles_check(const uint16_t* tile_bitmap, const int64_t* tile_offsets, int64_t size, tiles::Grid grid,
                               unsigned long long* error_index, cudaStream_t stream);
// The bitmap format back (row_offsets given; the tiles checked first).
cudaError_t bitmap_tiles_unpack(const void* tile_values, int element_bytes, const uint16_t* tile_bitmap,
                                const int64_t* tile_offsets, TilesSegments segments, const int64_t* row_offsets,
                                tiles::Grid grid, void* values, uint16_t* bitmap, cudaStream_t stream);
// The dense matrix (zeroed first by the caller). Safe on unchecked tiles: a row segment whose
// values would lie outside the `size` values comes out NaN, marks past the columns are skipped.
cudaError_t bitmap_tiles_dense(const void* tile_values, int element_bytes, int64_t size, const uint16_t* tile_bitmap,
                               const int64_t* tile_offsets, const int64_t* tile_prefix, tiles::Grid grid, void* dense,
                               cudaStream_t stream);

// ---- sparse GEMMs ----
// Y[n][m] = act(sum_k W[m][k] X[n][k] + bias[m]) for m < rows, n < batch, per image; W tiled.
// X element (n, k) of image i at x[i * x_stride_image + n * x_stride_n + k * x_stride_k], Y element
// (n, m) at y[i * y_stride_image + n * y_stride_n + m * y_stride_m]; x, y and the values share
// `type` (fp32, bf16 or fp16); bias (rows) of `bias_type`, or null. Linear: x (batch, k), y (batch, rows); 1x1
// convolution: per image x (k, pixels), y (rows, pixels), batch = pixels.
// A tile whose run does not fit (tiles::run_fits) never leads a kernel outside its buffers: the
// rows of its panel come out NaN (a per-call error check would cost a device synchronisation;
// the conversions check the tiles).
struct TilesGemm {
  const void* values;
  int64_t size;
  const uint16_t* tile_bitmap;
  const int64_t* tile_offsets;
  tiles::Grid grid;
  ScoreType type;
  const void* x;
  int64_t batch;
  int64_t x_stride_n;
  int64_t x_stride_k;
  int64_t x_stride_image;
  // kGemm: elements along x's unit-stride dimension that may be read in 16-byte units (a multiple
  // of 8, at least k for linear and batch for convolution; the caller zero-pads up to it).
  int64_t x_readable;
  // kGemm: x's unit stride runs along the batch (convolution: rows of k) rather than along k.
  bool x_batch_contiguous;
  const void* bias;
  ScoreType bias_type;
  int activation;  // 0 none, 1 relu, 2 relu6
  void* y;
  int64_t y_stride_n;
  int64_t y_stride_m;
  int64_t y_stride_image;
  int64_t images;
};

enum class TilesKernel : int {
  // CUDA cores, batch <= 16 per launch (more in launches of 16): each lane walks the marked
  // columns of two words, x staged in shared memory as fp32. Any type; any strides.
  kSimt = 0,
  // Tensor cores, batch <= 16 per launch: each warp builds mma.m16n8k16 A fragments of its tile
  // straight from the run (register-level decode), B fragments from x. bf16/fp16; x_stride_k == 1,
  // x_stride_n even, x 4-byte aligned, k even.
  kMma = 1,
  // Tensor cores, pipelined: runs and x tiles through shared memory by cp.async, 128 x 64 block
  // tiles. bf16/fp16; values 16-byte aligned; either x_stride_k == 1 (linear) or x_stride_n == 1
  // (convolution), the other stride a multiple of 8 and x 16-byte aligned.
  kGemm = 2,
};

// Workspace bytes a launch needs (split partial sums and counters; 0 for none) on a GPU with
// `sms` multiprocessors (the launcher asks the current device, cached).
size_t bitmap_tiles_gemm_workspace(const TilesGemm& args, TilesKernel kernel, int sms);
int current_device_sms();
cudaError_t bitmap_tiles_gemm(const TilesGemm& args, TilesKernel kernel, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream);

}  // namespace prunekit::cuda
