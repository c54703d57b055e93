// Tiled bitmap GEMM on CUDA cores for batches of up to 16 columns: the bandwidth-bound decode
// path. Each warp walks tiles of one panel; lane l holds the pair of words of row l / 2 covering
// 32 columns, the warp's scan of the pairs' popcounts places the lane in the tile's run, and the
// lane walks its marked columns (__ffs), one value read per nonzero (the lanes' reads fall inside
// the run: coalesced), against the block's chunks of x staged in shared memory as fp32 [col][slot].
// Cost per nonzero: one value, one shared load per 4 batch columns, a multiply-add per column.
#include "bitmap_tiles_common.cuh"

namespace prunekit::cuda::tiles_detail {
namespace {

struct SimtParams {
  const void* values;
  int64_t size;
  const uint32_t* pairs;
  const int64_t* tile_offsets;
  tiles::Grid grid;
  const void* x;
  int64_t batch;
  int64_t x_stride_n;
  int64_t x_stride_k;
  int64_t x_stride_image;
  int panels_per_block;
  int64_t chunks_per_split;
  Epilogue epilogue;
};

// acc[n] += w * x[n] for the slots of one column (16-byte loads where the slots allow).
template <int kSlots>
__device__ __forceinline__ void multiply_add(float (&acc)[kSlots], float w, const float* x) {
  if constexpr (kSlots % 4 == 0) {
#pragma unroll
    for (int n = 0; n < kSlots; n += 4) {
      const float4 v = *reinterpret_cast<const float4*>(x + n);
      acc[n] += w * v.x;
      acc[n + 1] += w * v.y;
      acc[n + 2] += w * v.z;
      acc[n + 3] += w * v.w;
    }
  } else {
#pragma unroll
    for (int n = 0; n < kSlots; ++n) acc[n] += w * x[n];
  }
}

template <typename E, int kSlots>
__global__ void __launch_bounds__(tiles::kDecodeWarps * 32) simt_kernel(SimtParams p) {
  using Storage = typename E::Storage;
  constexpr int kStride = tiles::simt_x_stride(kSlots);
  extern __shared__ float4 smem4[];
  __shared__ int bad_warp[tiles::kDecodeWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int per_block = p.panels_per_block;
  const int64_t split = blockIdx.y, image = blockIdx.z;
  const int64_t c0 = split * p.chunks_per_split;
  const int64_t c1 = c0 + p.chunks_per_split < p.grid.chunks ? c0 + p.chunks_per_split : p.grid.chunks;
  float* xs = reinterpret_cast<float*>(smem4);                        // [(c1 - c0) * 64][kStride]
  float* red = xs + p.chunks_per_split * tiles::kTileCols * kStride;  // [warps][16][kSlots]
  float* R = red + tiles::kDecodeWarps * tiles::kTileRows * kSlots;   // [per_block * 16][kSlots]

  // x of this split's columns, zero past k and past the batch.
  const Storage* x = static_cast<const Storage*>(p.x) + image * p.x_stride_image;
  const int64_t columns = (c1 - c0) * tiles::kTileCols;
  for (int64_t i = threadIdx.x; i < columns * kSlots; i += blockDim.x) {
    const int64_t n = i / columns, col = i % columns, k = c0 * tiles::kTileCols + col;
    xs[col * kStride + n] = n < p.batch && k < p.grid.cols ? E::to_float(x[n * p.x_stride_n + k * p.x_stride_k]) : 0.0f;
  }
  __syncthreads();

  float acc[kSlots];
#pragma unroll
  for (int n = 0; n < kSlots; ++n) acc[n] = 0.0f;
  bool bad = false;
  const int64_t panel = int64_t(blockIdx.x) * per_block + warp % per_block;
  if (panel < p.grid.panels) {
    const Storage* values = static_cast<const Storage*>(p.values);
    const int warps_per_panel = tiles::kDecodeWarps / per_block;
    for (int64_t c = c0 + warp / per_block; c < c1; c += warps_per_panel) {
      const TileHead head = tile_head(p.pairs, p.tile_offsets, p.size, panel * p.grid.chunks + c, lane);
      if (!head.fits) {  // warp-uniform: never read a run that does not fit
        bad = true;
        continue;
      }
      const Storage* v = values + head.begin + head.start;
      const float* x_cols = xs + ((c - c0) * tiles::kTileCols + tiles::pair_col(lane)) * kStride;
      for (uint32_t bits = head.pair; bits; bits &= bits - 1) {
        multiply_add<kSlots>(acc, E::to_float(__ldg(v++)), x_cols + (__ffs(bits) - 1) * kStride);
      }
    }
  }
  // Lanes 2r and 2r + 1 hold the two halves of row r.
#pragma unroll
  for (int n = 0; n < kSlots; ++n) acc[n] += __shfl_xor_sync(kFullMask, acc[n], 1);
  if ((lane & 1) == 0) {
#pragma unroll
    for (int n = 0; n < kSlots; ++n) red[(warp * tiles::kTileRows + tiles::pair_row(lane)) * kSlots + n] = acc[n];
  }
  if (lane == 0) bad_warp[warp] = bad;
  __syncthreads();
  add_warp_sums(red, bad_warp, R, per_block, kSlots);
  __syncthreads();
  finish_tile<E>(R, kSlots, int64_t(blockIdx.x) * per_block * tiles::kTileRows, 0, per_block * tiles::kTileRows, kSlots,
                 split, image, blockIdx.x, p.epilogue);
}

template <typename E, int kSlots>
cudaError_t launch_simt(const DecodeLaunch& launch, cudaStream_t stream) {
  const TilesGemm& a = launch.args;
  const tiles::DecodePlan& plan = launch.plan;
  const int64_t partial_rows = plan.groups * plan.panels_per_block * tiles::kTileRows;
  SimtParams p{a.values,
               a.size,
               reinterpret_cast<const uint32_t*>(a.tile_bitmap),
               a.tile_offsets,
               a.grid,
               a.x,
               launch.batch,
               a.x_stride_n,
               a.x_stride_k,
               a.x_stride_image,
               plan.panels_per_block,
               plan.chunks_per_split,
               make_epilogue(a, a.y, launch.batch, plan.splits, partial_rows, kSlots, plan.groups, launch.workspace)};
  if (cudaError_t status = clear_counters(p.epilogue, stream); status != cudaSuccess) return status;
  const size_t smem =
      sizeof(float) * (size_t(plan.chunks_per_split * tiles::kTileCols) * tiles::simt_x_stride(kSlots) +
                       size_t(kSlots) * (tiles::kDecodeWarps + plan.panels_per_block) * tiles::kTileRows);
  const dim3 grid(unsigned(plan.groups), unsigned(plan.splits), unsigned(a.images));
  simt_kernel<E, kSlots><<<grid, tiles::kDecodeWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename E>
cudaError_t launch_slots(const DecodeLaunch& launch, cudaStream_t stream) {
  switch (launch.slots) {
    case 1: return launch_simt<E, 1>(launch, stream);
    case 2: return launch_simt<E, 2>(launch, stream);
    case 4: return launch_simt<E, 4>(launch, stream);
    case 8: return launch_simt<E, 8>(launch, stream);
    default: return launch_simt<E, 16>(launch, stream);
  }
}

}  // namespace

cudaError_t launch_decode_simt(const DecodeLaunch& launch, cudaStream_t stream) {
  switch (launch.args.type) {
    case ScoreType::kBFloat16: return launch_slots<BF16>(launch, stream);
    case ScoreType::kFloat16: return launch_slots<F16>(launch, stream);
    default: return launch_slots<F32>(launch, stream);
  }
}

}  // namespace prunekit::cuda::tiles_detail
