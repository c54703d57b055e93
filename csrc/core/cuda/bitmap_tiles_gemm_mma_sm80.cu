// Tiled bitmap GEMM on tensor cores for larger batches and 1x1 convolution ("load sparse,
// compute dense", as in Flash-LLM / SpInfer): per 64-column chunk, a 3-stage cp.async pipeline
// brings each of the block's 8 tiles (128 bytes of bitmap and its run, 16-byte units thanks to
// the run alignment) and a 64 x 64 tile of x into shared memory; each warp decodes the A
// fragments of its two panels from the staged runs as the decode MMA kernel does (shuffled
// packed words, popcount offsets), B fragments come by ldmatrix (.trans for convolution's
// (k, pixels) x) from XOR-swizzled rows, and 2 x 8 mma.m16n8k16 per k-step accumulate in fp32.
// Block tile 128 rows x 64 batch columns; the epilogue goes through shared memory so y is written
// along its unit stride. Also the public launcher of the tiled GEMMs.
#include <mutex>
#include <vector>

#include "bitmap_tiles_common.cuh"

namespace prunekit::cuda::tiles_detail {
namespace {

constexpr int kStages = 3;
constexpr int kSlotsPerBlock = tiles::kGemmWarps * tiles::kGemmPanelsPerWarp;  // 8 tiles a stage
constexpr int kBitmapBytes = tiles::kTileWordCount * 2;                        // 128
constexpr int kSlotBytes = kBitmapBytes + tiles::kTileMaxValues * 2;           // bitmap, then the run
constexpr int kXTileBytes = 64 * 128;                                          // 64 rows of 64 elements
constexpr int kStageBytes = kSlotsPerBlock * kSlotBytes + kXTileBytes;
constexpr int kSmemBytes = kStages * kStageBytes;
constexpr int kEpilogueStride = tiles::kGemmCols + 4;  // floats per row of the staged result
static_assert(tiles::kGemmRows * kEpilogueStride * 4 <= kSmemBytes, "the epilogue reuses the pipeline's memory");

struct GemmParams {
  const uint16_t* values;
  int64_t size;
  const uint16_t* tile_bitmap;
  const int64_t* tile_offsets;
  tiles::Grid grid;
  const uint16_t* x;
  int64_t batch;
  int64_t x_stride;  // between rows of the x tile: along n (linear) or along k (convolution)
  int64_t x_stride_image;
  int64_t x_readable;
  int64_t chunks_per_split;
  Epilogue epilogue;
};

// Element (row, column) of a staged x tile (rows of 64 elements, 16-byte chunks XOR-swizzled by
// the row so that the 8 rows an ldmatrix reads sit in different banks).
__device__ __forceinline__ int x_tile_index(int row, int chunk) { return row * 64 + ((chunk ^ (row & 7)) << 3); }

template <typename E, bool kConv>
__global__ void __launch_bounds__(tiles::kGemmWarps * 32) gemm_kernel(GemmParams p) {
  extern __shared__ float4 smem4[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem4);
  __shared__ int staged_length[kStages][kSlotsPerBlock];  // -2: no panel, -1: offsets out of bounds
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t image = p.epilogue.images > 1 ? blockIdx.z : 0;
  const int64_t split = p.epilogue.images > 1 ? 0 : blockIdx.z;
  const int64_t c0 = split * p.chunks_per_split;
  const int64_t c1 = c0 + p.chunks_per_split < p.grid.chunks ? c0 + p.chunks_per_split : p.grid.chunks;
  const int64_t n0 = int64_t(blockIdx.y) * tiles::kGemmCols;
  const int64_t first_panel = int64_t(blockIdx.x) * kSlotsPerBlock;
  const uint16_t* x = p.x + image * p.x_stride_image;
  const auto slot_at = [&](int stage, int slot) { return smem + stage * kStageBytes + slot * kSlotBytes; };
  const auto x_tile = [&](int stage) {
    return reinterpret_cast<uint16_t*>(smem + stage * kStageBytes + kSlotsPerBlock * kSlotBytes);
  };

  const auto load_stage = [&](int stage, int64_t c) {
#pragma unroll
    for (int f = 0; f < tiles::kGemmPanelsPerWarp; ++f) {  // each warp brings its own panels' tiles
      const int slot = warp * tiles::kGemmPanelsPerWarp + f;
      const int64_t panel = first_panel + slot;
      int length = -2;
      if (panel < p.grid.panels) {
        const int64_t tile = panel * p.grid.chunks + c;
        const int64_t begin = __ldg(p.tile_offsets + tile), end = __ldg(p.tile_offsets + tile + 1);
        const bool in_bounds = begin >= 0 && begin % tiles::kRunAlign == 0 && end >= begin && end <= p.size &&
                               end - begin <= tiles::kTileMaxValues;
        length = in_bounds ? int(end - begin) : -1;
        unsigned char* dst = slot_at(stage, slot);
        if (lane < kBitmapBytes / 16)
          cp_async16(dst + 16 * lane, p.tile_bitmap + tile * tiles::kTileWordCount + 8 * lane, true);
        if (in_bounds) {
          for (int i = lane; i < length / 8; i += 32)
            cp_async16(dst + kBitmapBytes + 16 * i, p.values + begin + 8 * i, true);
        }
      }
      if (lane == 0) staged_length[stage][slot] = length;
    }
    uint16_t* xs = x_tile(stage);
    for (int i = threadIdx.x; i < 64 * 8; i += blockDim.x) {
      const int row = i >> 3, chunk = i & 7;
      // Linear: rows are batch columns n, chunks run along k. Convolution: rows are k, chunks along n.
      const int64_t outer = kConv ? c * 64 + row : n0 + row;
      const int64_t inner = kConv ? n0 + 8 * chunk : c * 64 + 8 * chunk;
      const bool valid = outer < (kConv ? p.grid.cols : p.batch) && inner < p.x_readable;
      cp_async16(xs + x_tile_index(row, chunk), valid ? x + outer * p.x_stride + inner : x, valid);
    }
  };

  float acc[tiles::kGemmPanelsPerWarp][8][4];
#pragma unroll
  for (int f = 0; f < tiles::kGemmPanelsPerWarp; ++f) {
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[f][j][0] = acc[f][j][1] = acc[f][j][2] = acc[f][j][3] = 0.0f;
  }
  bool bad[tiles::kGemmPanelsPerWarp] = {};
  const int group = tiles::frag_group(lane);
  const int64_t count = c1 - c0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < count) load_stage(s, c0 + s);
    cp_async_commit();
  }
  for (int64_t it = 0; it < count; ++it) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage `it` is in; every warp is done with the stage refilled below
    const int64_t next = it + kStages - 1;
    if (next < count) load_stage(int(next % kStages), c0 + next);
    cp_async_commit();

    const int stage = int(it % kStages);
    uint32_t packed[tiles::kGemmPanelsPerWarp][2];
#pragma unroll
    for (int f = 0; f < tiles::kGemmPanelsPerWarp; ++f) {
      const int slot = warp * tiles::kGemmPanelsPerWarp + f;
      const int length = staged_length[stage][slot];
      const uint32_t pair = length >= 0 ? reinterpret_cast<const uint32_t*>(slot_at(stage, slot))[lane] : 0u;
      const int count_here = __popc(pair);
      const int inclusive = warp_inclusive_scan(count_here, lane);
      const int marks = __shfl_sync(kFullMask, inclusive, 31);
      const bool fits = length >= 0 && length == tiles::run_length(marks);
      bad[f] = bad[f] || length == -1 || (length >= 0 && !fits);
      // A tile that does not fit decodes as zeros (its panel's rows come out NaN).
      packed[f][0] = fits ? tiles::packed_word(pair, uint32_t(inclusive - count_here), 0) : 0u;
      packed[f][1] = fits ? tiles::packed_word(pair, uint32_t(inclusive - count_here), 1) : 0u;
    }
    const uint16_t* xs = x_tile(stage);
#pragma unroll
    for (int step = 0; step < tiles::kTileWords; ++step) {
      uint32_t b[8][2];
#pragma unroll
      for (int pair_of_frags = 0; pair_of_frags < 4; ++pair_of_frags) {
        // ldmatrix.x4: lane i gives row i & 7 of matrix i >> 3; matrices (frag 2j, k 0-7),
        // (frag 2j, k 8-15), (frag 2j + 1, k 0-7), (frag 2j + 1, k 8-15) of this k-step.
        const int q = lane >> 3, r8 = lane & 7;
        const int frag = 2 * pair_of_frags + (q >> 1);
        const int row = kConv ? 16 * step + 8 * (q & 1) + r8 : 8 * frag + r8;
        const int chunk = kConv ? frag : 2 * step + (q & 1);
        uint32_t r[4];
        ldmatrix_x4<kConv>(r, xs + x_tile_index(row, chunk));
        b[2 * pair_of_frags][0] = r[0];
        b[2 * pair_of_frags][1] = r[1];
        b[2 * pair_of_frags + 1][0] = r[2];
        b[2 * pair_of_frags + 1][1] = r[3];
      }
#pragma unroll
      for (int f = 0; f < tiles::kGemmPanelsPerWarp; ++f) {
        const uint32_t low = __shfl_sync(kFullMask, packed[f][step & 1], tiles::word_owner(group, step));
        const uint32_t high = __shfl_sync(kFullMask, packed[f][step & 1], tiles::word_owner(group + 8, step));
        const uint16_t* run =
            reinterpret_cast<const uint16_t*>(slot_at(stage, warp * tiles::kGemmPanelsPerWarp + f) + kBitmapBytes);
        const auto load = [run](uint32_t i) { return run[i]; };  // i < 1024: inside the slot whatever the data
        uint32_t a[4];
#pragma unroll
        for (int reg = 0; reg < 4; ++reg) {
          a[reg] = tiles::pair_bits(load, tiles::pair_position(reg & 1 ? high : low, tiles::a_frag_col(lane, reg)));
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) mma_16816<E>(acc[f][j], a, b[j][0], b[j][1]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  float* R = reinterpret_cast<float*>(smem);  // [128][kEpilogueStride]
#pragma unroll
  for (int f = 0; f < tiles::kGemmPanelsPerWarp; ++f) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = (warp * tiles::kGemmPanelsPerWarp + f) * tiles::kTileRows + tiles::c_frag_row(lane, i);
        R[row * kEpilogueStride + 8 * j + tiles::c_frag_col(lane, i)] =
            bad[f] ? __int_as_float(0x7fc00000) : acc[f][j][i];
      }
    }
  }
  __syncthreads();
  finish_tile<E>(R, kEpilogueStride, first_panel * tiles::kTileRows, n0, tiles::kGemmRows, tiles::kGemmCols, split,
                 image, int64_t(blockIdx.x) + int64_t(gridDim.x) * blockIdx.y, p.epilogue);
}

// Above 48 KiB of dynamic shared memory a kernel must opt in, once per device (not a stream
// operation: also fine while a CUDA graph is being captured, but done before, at the first call).
template <typename E, bool kConv>
cudaError_t allow_shared_memory() {
  static std::mutex mutex;
  static std::vector<bool> done;
  int device = 0;
  if (cudaError_t status = cudaGetDevice(&device); status != cudaSuccess) return status;
  std::lock_guard<std::mutex> lock(mutex);
  if (int(done.size()) <= device) done.resize(device + 1, false);
  if (done[device]) return cudaSuccess;
  const cudaError_t status =
      cudaFuncSetAttribute(gemm_kernel<E, kConv>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  done[device] = status == cudaSuccess;
  return status;
}

template <typename E, bool kConv>
cudaError_t launch_gemm(const TilesGemm& a, const tiles::GemmPlan& plan, void* workspace, cudaStream_t stream) {
  const int64_t tiles_per_image = plan.blocks_m * plan.blocks_n;
  GemmParams p{static_cast<const uint16_t*>(a.values),
               a.size,
               a.tile_bitmap,
               a.tile_offsets,
               a.grid,
               static_cast<const uint16_t*>(a.x),
               a.batch,
               kConv ? a.x_stride_k : a.x_stride_n,
               a.x_stride_image,
               a.x_readable,
               plan.chunks_per_split,
               make_epilogue(a, a.y, a.batch, plan.splits, plan.blocks_m * tiles::kGemmRows,
                             plan.blocks_n * tiles::kGemmCols, tiles_per_image, workspace)};
  if (cudaError_t status = clear_counters(p.epilogue, stream); status != cudaSuccess) return status;
  const auto kernel = gemm_kernel<E, kConv>;
  if (cudaError_t status = allow_shared_memory<E, kConv>(); status != cudaSuccess) return status;
  const dim3 grid(unsigned(plan.blocks_m), unsigned(plan.blocks_n), unsigned(a.images > 1 ? a.images : plan.splits));
  kernel<<<grid, tiles::kGemmWarps * 32, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

int batch_slots(int64_t columns) {
  int slots = 1;
  while (slots < columns) slots *= 2;
  return slots;
}

}  // namespace

cudaError_t launch_gemm_mma(const TilesGemm& args, const tiles::GemmPlan& plan, void* workspace, cudaStream_t stream) {
  const bool conv = args.x_batch_contiguous;
  if (args.type == ScoreType::kBFloat16) {
    return conv ? launch_gemm<BF16, true>(args, plan, workspace, stream)
                : launch_gemm<BF16, false>(args, plan, workspace, stream);
  }
  return conv ? launch_gemm<F16, true>(args, plan, workspace, stream)
              : launch_gemm<F16, false>(args, plan, workspace, stream);
}

}  // namespace prunekit::cuda::tiles_detail

namespace prunekit::cuda {
namespace {

using tiles_detail::DecodeLaunch;

constexpr int64_t kDecodeBatch = 16;  // batch columns per decode launch

// The launches of a decode kernel: batch columns in groups of 16, each sized for its columns.
template <typename Visit>
cudaError_t for_each_decode_launch(const TilesGemm& args, TilesKernel kernel, int sms, Visit visit) {
  for (int64_t first = 0; first < args.batch; first += kDecodeBatch) {
    const int64_t columns = args.batch - first < kDecodeBatch ? args.batch - first : kDecodeBatch;
    int slots = tiles_detail::batch_slots(columns);
    if (kernel == TilesKernel::kMma) slots = slots <= 8 ? 8 : 16;
    TilesGemm part = args;
    const int element = args.type == ScoreType::kFloat32 ? 4 : 2;
    part.x = static_cast<const char*>(args.x) + first * args.x_stride_n * element;
    part.y = static_cast<char*>(args.y) + first * args.y_stride_n * element;
    const DecodeLaunch launch{part, columns, slots,
                              tiles::decode_plan(args.grid, slots, kernel == TilesKernel::kSimt, sms), nullptr};
    if (cudaError_t status = visit(launch); status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

}  // namespace

int current_device_sms() {
  static std::mutex mutex;
  static std::vector<int> cached;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  std::lock_guard<std::mutex> lock(mutex);
  if (int(cached.size()) <= device) cached.resize(device + 1, 0);
  if (cached[device] == 0) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms < 1) sms = 1;
    cached[device] = sms;
  }
  return cached[device];
}

size_t bitmap_tiles_gemm_workspace(const TilesGemm& args, TilesKernel kernel, int sms) {
  if (args.batch == 0 || args.images == 0) return 0;
  if (kernel == TilesKernel::kGemm) {
    const tiles::GemmPlan plan = tiles::gemm_plan(args.grid, args.batch, args.images, sms);
    return tiles_detail::workspace_bytes(plan.splits, args.images, plan.blocks_m * tiles::kGemmRows,
                                         plan.blocks_n * tiles::kGemmCols, plan.blocks_m * plan.blocks_n);
  }
  size_t most = 0;
  for_each_decode_launch(args, kernel, sms, [&](const DecodeLaunch& launch) {
    const size_t bytes = tiles_detail::decode_workspace(launch.args, launch.plan, launch.slots);
    most = bytes > most ? bytes : most;
    return cudaSuccess;
  });
  return most;
}

cudaError_t bitmap_tiles_gemm(const TilesGemm& args, TilesKernel kernel, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  if (args.batch == 0 || args.images == 0) return cudaSuccess;
  const int sms = current_device_sms();
  if (workspace_bytes < bitmap_tiles_gemm_workspace(args, kernel, sms)) return cudaErrorInvalidValue;
  if (kernel == TilesKernel::kGemm) {
    return tiles_detail::launch_gemm_mma(args, tiles::gemm_plan(args.grid, args.batch, args.images, sms), workspace,
                                         stream);
  }
  if (kernel == TilesKernel::kMma && args.images != 1) return cudaErrorInvalidValue;
  // Launches of 16 columns run one after the other on the stream, so they share the workspace.
  return for_each_decode_launch(args, kernel, sms, [&](DecodeLaunch launch) {
    launch.workspace = workspace;
    return kernel == TilesKernel::kSimt ? tiles_detail::launch_decode_simt(launch, stream)
                                        : tiles_detail::launch_decode_mma(launch, stream);
  });
}

}  // namespace prunekit::cuda
