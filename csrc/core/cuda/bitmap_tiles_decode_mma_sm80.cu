// Tiled bitmap GEMM on tensor cores for batches of up to 16 columns, decoding in registers: each
// warp builds the mma.m16n8k16 A fragments of its tile straight from the run (no shared memory,
// no block barrier in the tile loop). Per k-step a lane fetches the two packed words it needs
// (word | run position << 16) from their owner lanes by two shuffles, and each fragment register's
// two elements from the run at popcount offsets; B fragments are 32-bit loads of x through L1.
// The cost is per dense position, not per nonzero: it wins over the SIMT kernel where tiles are
// dense enough or the batch wide enough that the SIMT kernel's per-nonzero work dominates.
#include "bitmap_tiles_common.cuh"

namespace prunekit::cuda::tiles_detail {
namespace {

struct MmaParams {
  const uint16_t* values;
  int64_t size;
  const uint32_t* pairs;
  const int64_t* tile_offsets;
  tiles::Grid grid;
  const uint16_t* x;  // (batch, k), rows x_stride_n (even) apart, 4-byte aligned; k even
  int64_t batch;
  int64_t x_stride_n;
  int panels_per_block;
  int64_t chunks_per_split;
  Epilogue epilogue;
};

template <typename E, int kFrags>
__global__ void __launch_bounds__(tiles::kDecodeWarps * 32) mma_kernel(MmaParams p) {
  constexpr int kSlots = 8 * kFrags;
  __shared__ float red[tiles::kDecodeWarps * tiles::kTileRows * kSlots];
  __shared__ float R[tiles::kDecodeWarps * tiles::kTileRows * kSlots];
  __shared__ int bad_warp[tiles::kDecodeWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int per_block = p.panels_per_block;
  const int64_t split = blockIdx.y;
  const int64_t c0 = split * p.chunks_per_split;
  const int64_t c1 = c0 + p.chunks_per_split < p.grid.chunks ? c0 + p.chunks_per_split : p.grid.chunks;
  const int group = tiles::frag_group(lane);

  float acc[kFrags][4];
#pragma unroll
  for (int f = 0; f < kFrags; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.0f;
  bool bad = false;
  const int64_t panel = int64_t(blockIdx.x) * per_block + warp % per_block;
  if (panel < p.grid.panels) {
    const int warps_per_panel = tiles::kDecodeWarps / per_block;
    for (int64_t c = c0 + warp / per_block; c < c1; c += warps_per_panel) {
      const TileHead head = tile_head(p.pairs, p.tile_offsets, p.size, panel * p.grid.chunks + c, lane);
      if (!head.fits) {  // warp-uniform: never read a run that does not fit
        bad = true;
        continue;
      }
      const uint16_t* run = p.values + head.begin;
      const auto load = [run](uint32_t i) { return __ldg(run + i); };
      const uint32_t packed[2] = {tiles::packed_word(head.pair, head.start, 0),
                                  tiles::packed_word(head.pair, head.start, 1)};
#pragma unroll
      for (int step = 0; step < tiles::kTileWords; ++step) {
        const uint32_t low = __shfl_sync(kFullMask, packed[step & 1], tiles::word_owner(group, step));
        const uint32_t high = __shfl_sync(kFullMask, packed[step & 1], tiles::word_owner(group + 8, step));
        uint32_t a[4];
#pragma unroll
        for (int reg = 0; reg < 4; ++reg) {
          a[reg] = tiles::pair_bits(load, tiles::pair_position(reg & 1 ? high : low, tiles::a_frag_col(lane, reg)));
        }
        const int64_t k = c * tiles::kTileCols + 16 * step;
#pragma unroll
        for (int f = 0; f < kFrags; ++f) {
          const int64_t n = 8 * f + tiles::b_frag_n(lane);
          uint32_t b[2];
#pragma unroll
          for (int reg = 0; reg < 2; ++reg) {
            const int64_t kk = k + tiles::b_frag_k(lane, reg);  // even; k is even, so kk + 1 < k too
            b[reg] = n < p.batch && kk < p.grid.cols
                         ? __ldg(reinterpret_cast<const uint32_t*>(p.x + n * p.x_stride_n + kk))
                         : 0u;
          }
          mma_16816<E>(acc[f], a, b[0], b[1]);
        }
      }
    }
  }
#pragma unroll
  for (int f = 0; f < kFrags; ++f) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      red[(warp * tiles::kTileRows + tiles::c_frag_row(lane, i)) * kSlots + 8 * f + tiles::c_frag_col(lane, i)] =
          acc[f][i];
    }
  }
  if (lane == 0) bad_warp[warp] = bad;
  __syncthreads();
  add_warp_sums(red, bad_warp, R, per_block, kSlots);
  __syncthreads();
  finish_tile<E>(R, kSlots, int64_t(blockIdx.x) * per_block * tiles::kTileRows, 0, per_block * tiles::kTileRows, kSlots,
                 split, 0, blockIdx.x, p.epilogue);
}

template <typename E, int kFrags>
cudaError_t launch_mma(const DecodeLaunch& launch, cudaStream_t stream) {
  const TilesGemm& a = launch.args;
  const tiles::DecodePlan& plan = launch.plan;
  const int64_t partial_rows = plan.groups * plan.panels_per_block * tiles::kTileRows;
  MmaParams p{
      static_cast<const uint16_t*>(a.values),
      a.size,
      reinterpret_cast<const uint32_t*>(a.tile_bitmap),
      a.tile_offsets,
      a.grid,
      static_cast<const uint16_t*>(a.x),
      launch.batch,
      a.x_stride_n,
      plan.panels_per_block,
      plan.chunks_per_split,
      make_epilogue(a, a.y, launch.batch, plan.splits, partial_rows, 8 * kFrags, plan.groups, launch.workspace)};
  if (cudaError_t status = clear_counters(p.epilogue, stream); status != cudaSuccess) return status;
  const dim3 grid(unsigned(plan.groups), unsigned(plan.splits), 1);
  mma_kernel<E, kFrags><<<grid, tiles::kDecodeWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename E>
cudaError_t launch_frags(const DecodeLaunch& launch, cudaStream_t stream) {
  return launch.slots <= 8 ? launch_mma<E, 1>(launch, stream) : launch_mma<E, 2>(launch, stream);
}

}  // namespace

cudaError_t launch_decode_mma(const DecodeLaunch& launch, cudaStream_t stream) {
  return launch.args.type == ScoreType::kBFloat16 ? launch_frags<BF16>(launch, stream)
                                                  : launch_frags<F16>(launch, stream);
}

}  // namespace prunekit::cuda::tiles_detail
