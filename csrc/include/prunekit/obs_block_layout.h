// Index math of SparseGPT's blocked OBS solve shared by the host glue (every device), the fused
// CUDA kernel and the C++ tests (torch-free, host+device): how a block of columns splits into the
// chunks one fused step handles, the packed upper triangle of a chunk's inverse-Hessian slice in
// the CUDA kernel's shared memory, and the CUDA launch shape.
#pragma once

#include <cstdint>

#if !defined(PRUNEKIT_HD)
#if defined(__CUDACC__)
#define PRUNEKIT_HD __host__ __device__ __forceinline__
#else
#define PRUNEKIT_HD inline
#endif
#endif

namespace prunekit::obs {

// The largest N:M group (m) the solve handles: a chunk always holds whole groups.
constexpr int64_t kMaxGroup = 64;
// Columns the device-generic solve updates one by one before a GEMM carries their errors to the
// rest of the block (the CPU kernel's sub-block: the same arithmetic order).
constexpr int64_t kGenericChunk = 16;
// The fused CUDA kernel: one warp per row, each lane holding up to 4 columns of it in registers.
constexpr int kWarpLanes = 32;
constexpr int kCudaMaxRegisterColumns = 4;
constexpr int64_t kCudaMaxChunk = kWarpLanes * kCudaMaxRegisterColumns;
constexpr int kCudaWarpsPerBlock = 8;

// Columns per chunk: max_chunk for unstructured pruning, else the most whole N:M groups that fit
// in max_chunk (at least one group). Blocks start at multiples of m, so no group straddles chunks.
PRUNEKIT_HD int64_t chunk_width(int64_t max_chunk, int64_t m) {
  if (m <= 0) return max_chunk;
  return max_chunk >= m ? max_chunk / m * m : m;
}

// The packed upper triangle (diagonal included) of a width x width matrix, row by row: row i
// holds entries i..width-1. Lanes reading entries (i, j), (i, j+1), ... touch consecutive words.
PRUNEKIT_HD int64_t tri_size(int64_t width) { return width * (width + 1) / 2; }
PRUNEKIT_HD int64_t tri_row_start(int64_t i, int64_t width) { return i * width - i * (i - 1) / 2; }
PRUNEKIT_HD int64_t tri_offset(int64_t i, int64_t j, int64_t width) { return tri_row_start(i, width) + (j - i); }

// Registers per lane the CUDA kernel needs for a chunk of `width` columns (1..4).
PRUNEKIT_HD int register_columns(int64_t width) { return int((width + kWarpLanes - 1) / kWarpLanes); }

// Shared memory of one CUDA thread block: the triangle, then kMaxGroup N:M scores per warp.
PRUNEKIT_HD int64_t cuda_scratch_offset(int64_t width) { return (tri_size(width) + 3) / 4 * 4; }
PRUNEKIT_HD int64_t cuda_smem_bytes(int64_t width) {
  return int64_t(sizeof(float)) * (cuda_scratch_offset(width) + kCudaWarpsPerBlock * kMaxGroup);
}

// Thread blocks for `rows` rows (one warp per row, warps stride over rows): enough to fill every
// SM at the occupancy the kernel reaches, never more than there are warps of rows.
PRUNEKIT_HD int64_t cuda_grid_blocks(int64_t rows, int64_t sms, int64_t blocks_per_sm) {
  const int64_t needed = (rows + kCudaWarpsPerBlock - 1) / kCudaWarpsPerBlock;
  const int64_t resident = (sms > 0 ? sms : 1) * (blocks_per_sm > 0 ? blocks_per_sm : 1);
  return needed < resident ? needed : resident;
}

}  // namespace prunekit::obs
