// Conversions of the tiled bitmap layout on CUDA cores (one-off, bandwidth-bound): a thread per
// row, per tile or per row segment (row r's marks in chunk c), the segments placed by prefix sums
// the caller computes from bitmap_tiles_marks_* (prunekit/bitmap_tiles_cuda.h).
#include "prunekit/bitmap_tiles.h"
#include "prunekit/bitmap_tiles_cuda.h"

namespace prunekit::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t work) { return unsigned((work + kThreads - 1) / kThreads); }

__device__ __forceinline__ int64_t thread_index() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }

__global__ void check_rows_kernel(const uint16_t* bitmap, const int64_t* row_offsets, tiles::Grid grid,
                                  unsigned long long* error_index) {
  const int64_t row = thread_index();
  if (row >= grid.rows) return;
  int64_t marks = 0;
  bool ok = true;
  for (int64_t w = 0; w < grid.words; ++w) {
    const uint32_t word = bitmap[row * grid.words + w];
    ok = ok && (word & ~tiles::word_limit_bits(w, grid.cols)) == 0;
    marks += __popc(word);
  }
  if (!ok || row_offsets[row + 1] - row_offsets[row] != marks) atomicMin(error_index, (unsigned long long)row);
}

__global__ void marks_from_bitmap_kernel(const uint16_t* bitmap, tiles::Grid grid, int32_t* marks) {
  const int64_t index = thread_index();
  if (index >= grid.panels * tiles::kTileRows * grid.chunks) return;
  const int64_t row = index / grid.chunks, chunk = index % grid.chunks;
  marks[index] = row < grid.rows ? tiles::row_chunk_marks(bitmap, grid.words, row, chunk) : 0;
}

__global__ void marks_from_tiles_kernel(const uint16_t* tile_bitmap, tiles::Grid grid, int32_t* marks) {
  const int64_t index = thread_index();
  if (index >= grid.panels * tiles::kTileRows * grid.chunks) return;
  const int64_t row = index / grid.chunks, chunk = index % grid.chunks;
  const int64_t tile = row / tiles::kTileRows * grid.chunks + chunk;
  marks[index] = tiles::tile_row_marks(tile_bitmap, tile, int(row % tiles::kTileRows));
}

template <typename Bits>
__global__ void pack_kernel(const Bits* values, const uint16_t* bitmap, const int64_t* row_offsets,
                            TilesSegments segments, const int64_t* tile_offsets, tiles::Grid grid, Bits* tile_values,
                            uint16_t* tile_bitmap) {
  const int64_t index = thread_index();
  if (index >= grid.panels * tiles::kTileRows * grid.chunks) return;
  const int64_t row = index / grid.chunks, chunk = index % grid.chunks;
  const int64_t tile = row / tiles::kTileRows * grid.chunks + chunk;
  const int r = int(row % tiles::kTileRows);
  for (int w = 0; w < tiles::kTileWords; ++w) {
    const int64_t word = chunk * tiles::kTileWords + w;
    tile_bitmap[tiles::tile_word_index(tile, r, w)] =
        row < grid.rows && word < grid.words ? bitmap[row * grid.words + word] : 0;
  }
  if (row >= grid.rows) return;
  const int marks = tiles::row_chunk_marks(bitmap, grid.words, row, chunk);
  const Bits* from = values + row_offsets[row] + segments.row_prefix[index];
  Bits* to = tile_values + tile_offsets[tile] + segments.tile_prefix[index];
  for (int i = 0; i < marks; ++i) to[i] = from[i];
}

__global__ void check_tiles_kernel(const uint16_t* tile_bitmap, const int64_t* tile_offsets, int64_t size,
                                   tiles::Grid grid, unsigned long long* error_index) {
  const int64_t tile = thread_index();
  if (tile >= grid.panels * grid.chunks) return;
  const int64_t panel = tile / grid.chunks, chunk = tile % grid.chunks;
  int marks = 0;
  bool ok = true;
  for (int r = 0; r < tiles::kTileRows; ++r) {
    const bool padding_row = panel * tiles::kTileRows + r >= grid.rows;
    for (int w = 0; w < tiles::kTileWords; ++w) {
      const uint32_t word = tile_bitmap[tiles::tile_word_index(tile, r, w)];
      const uint32_t allowed = padding_row ? 0u : tiles::word_limit_bits(chunk * tiles::kTileWords + w, grid.cols);
      ok = ok && (word & ~allowed) == 0;
      marks += __popc(word);
    }
  }
  if (!ok || !tiles::run_fits(tile_offsets[tile], tile_offsets[tile + 1], marks, size)) {
    atomicMin(error_index, (unsigned long long)tile);
  }
}

template <typename Bits>
__global__ void unpack_kernel(const Bits* tile_values, const uint16_t* tile_bitmap, const int64_t* tile_offsets,
                              TilesSegments segments, const int64_t* row_offsets, tiles::Grid grid, Bits* values,
                              uint16_t* bitmap) {
  const int64_t index = thread_index();
  if (index >= grid.rows * grid.chunks) return;  // padding rows come last: index is also (row, chunk)
  const int64_t row = index / grid.chunks, chunk = index % grid.chunks;
  const int64_t tile = row / tiles::kTileRows * grid.chunks + chunk;
  const int r = int(row % tiles::kTileRows);
  for (int w = 0; w < tiles::kTileWords && chunk * tiles::kTileWords + w < grid.words; ++w) {
    bitmap[row * grid.words + chunk * tiles::kTileWords + w] = tile_bitmap[tiles::tile_word_index(tile, r, w)];
  }
  const int marks = tiles::tile_row_marks(tile_bitmap, tile, r);
  const Bits* from = tile_values + tile_offsets[tile] + segments.tile_prefix[index];
  Bits* to = values + row_offsets[row] + segments.row_prefix[index];
  for (int i = 0; i < marks; ++i) to[i] = from[i];
}

// Also the sparse GEMM op's expansion, which does not check the tiles first (that would cost a
// device synchronisation): a segment whose values would lie outside the buffer is written as NaN
// (all bits set), never read, and marks past the columns are skipped.
template <typename Bits>
__global__ void dense_kernel(const Bits* tile_values, int64_t size, const uint16_t* tile_bitmap,
                             const int64_t* tile_offsets, const int64_t* tile_prefix, tiles::Grid grid, Bits* dense) {
  const int64_t index = thread_index();
  if (index >= grid.rows * grid.chunks) return;
  const int64_t row = index / grid.chunks, chunk = index % grid.chunks;
  const int64_t tile = row / tiles::kTileRows * grid.chunks + chunk;
  const int r = int(row % tiles::kTileRows);
  const int64_t begin = tile_offsets[tile] + tile_prefix[index];
  const bool inside = tile_offsets[tile] >= 0 && begin + tiles::tile_row_marks(tile_bitmap, tile, r) <= size;
  const Bits* from = tile_values + (inside ? begin : 0);
  for (int w = 0; w < tiles::kTileWords; ++w) {
    for (uint32_t word = tile_bitmap[tiles::tile_word_index(tile, r, w)]; word; word &= word - 1) {
      const int64_t col = chunk * tiles::kTileCols + 16 * w + __ffs(word) - 1;
      const Bits value = inside ? *from++ : Bits(~Bits(0));
      if (col < grid.cols) dense[row * grid.cols + col] = value;
    }
  }
}

}  // namespace

cudaError_t bitmap_tiles_check_rows(const uint16_t* bitmap, const int64_t* row_offsets, tiles::Grid grid,
                                    unsigned long long* error_index, cudaStream_t stream) {
  if (grid.rows == 0) return cudaSuccess;
  check_rows_kernel<<<blocks_for(grid.rows), kThreads, 0, stream>>>(bitmap, row_offsets, grid, error_index);
  return cudaGetLastError();
}

cudaError_t bitmap_tiles_marks_from_bitmap(const uint16_t* bitmap, tiles::Grid grid, int32_t* marks,
                                           cudaStream_t stream) {
  const int64_t work = grid.panels * tiles::kTileRows * grid.chunks;
  if (work == 0) return cudaSuccess;
  marks_from_bitmap_kernel<<<blocks_for(work), kThreads, 0, stream>>>(bitmap, grid, marks);
  return cudaGetLastError();
}

cudaError_t bitmap_tiles_marks_from_tiles(const uint16_t* tile_bitmap, tiles::Grid grid, int32_t* marks,
                                          cudaStream_t stream) {
  const int64_t work = grid.panels * tiles::kTileRows * grid.chunks;
  if (work == 0) return cudaSuccess;
  marks_from_tiles_kernel<<<blocks_for(work), kThreads, 0, stream>>>(tile_bitmap, grid, marks);
  return cudaGetLastError();
}

cudaError_t bitmap_tiles_pack(const void* values, int element_bytes, const uint16_t* bitmap, const int64_t* row_offsets,
                              TilesSegments segments, const int64_t* tile_offsets, tiles::Grid grid, void* tile_values,
                              uint16_t* tile_bitmap, cudaStream_t stream) {
  const int64_t work = grid.panels * tiles::kTileRows * grid.chunks;
  if (work == 0) return cudaSuccess;
  if (element_bytes == 2) {
    pack_kernel<<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const uint16_t*>(values), bitmap, row_offsets,
                                                           segments, tile_offsets, grid,
                                                           static_cast<uint16_t*>(tile_values), tile_bitmap);
  } else {
    pack_kernel<<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const uint32_t*>(values), bitmap, row_offsets,
                                                           segments, tile_offsets, grid,
                                                           static_cast<uint32_t*>(tile_values), tile_bitmap);
  }
  return cudaGetLastError();
}

cudaError_t bitmap_tiles_check(const uint16_t* tile_bitmap, const int64_t* tile_offsets, int64_t size, tiles::Grid grid,
                               unsigned long long* error_index, cudaStream_t stream) {
  const int64_t work = grid.panels * grid.chunks;
  if (work == 0) return cudaSuccess;
  check_tiles_kernel<<<blocks_for(work), kThreads, 0, stream>>>(tile_bitmap, tile_offsets, size, grid, error_index);
  return cudaGetLastError();
}

cudaError_t bitmap_tiles_unpack(const void* tile_values, int element_bytes, const uint16_t* tile_bitmap,
                                const int64_t* tile_offsets, TilesSegments segments, const int64_t* row_offsets,
                                tiles::Grid grid, void* values, uint16_t* bitmap, cudaStream_t stream) {
  const int64_t work = grid.rows * grid.chunks;
  if (work == 0) return cudaSuccess;
  if (element_bytes == 2) {
    unpack_kernel<<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const uint16_t*>(tile_values), tile_bitmap,
                                                             tile_offsets, segments, row_offsets, grid,
                                                             static_cast<uint16_t*>(values), bitmap);
  } else {
    unpack_kernel<<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const uint32_t*>(tile_values), tile_bitmap,
                                                             tile_offsets, segments, row_offsets, grid,
                                                             static_cast<uint32_t*>(values), bitmap);
  }
  return cudaGetLastError();
}

cudaError_t bitmap_tiles_dense(const void* tile_values, int element_bytes, int64_t size, const uint16_t* tile_bitmap,
                               const int64_t* tile_offsets, const int64_t* tile_prefix, tiles::Grid grid, void* dense,
                               cudaStream_t stream) {
  const int64_t work = grid.rows * grid.chunks;
  if (work == 0) return cudaSuccess;
  if (element_bytes == 2) {
    dense_kernel<<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const uint16_t*>(tile_values), size,
                                                            tile_bitmap, tile_offsets, tile_prefix, grid,
                                                            static_cast<uint16_t*>(dense));
  } else {
    dense_kernel<<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const uint32_t*>(tile_values), size,
                                                            tile_bitmap, tile_offsets, tile_prefix, grid,
                                                            static_cast<uint32_t*>(dense));
  }
  return cudaGetLastError();
}

}  // namespace prunekit::cuda
