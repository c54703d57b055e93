// SparseGPT's in-block OBS updates on CUDA cores, one chunk of up to 128 columns per launch: rows
// spread over warps (one warp per row, warps striding over rows), the chunk's inverse-Hessian
// slice in shared memory as a packed upper triangle (33 KB at 128 columns), the N:M choice made
// inside the kernel on the updated weights. The per-row algorithm is sparsegpt_obs_row.h, which
// the C++ tests also run on host threads. Built for sm_80 and sm_90a.
#include "prunekit/sparsegpt_cuda.h"
#include "sparsegpt_obs_row.h"

namespace prunekit::cuda {
namespace {

using obs::kCudaWarpsPerBlock;
using obs::kWarpLanes;
constexpr int kThreads = kCudaWarpsPerBlock * kWarpLanes;
constexpr unsigned kFullMask = 0xffffffffu;

struct CudaWarp {
  __device__ __forceinline__ int lane() const { return int(threadIdx.x) & (kWarpLanes - 1); }
  __device__ __forceinline__ float shfl(float value, int src) const { return __shfl_sync(kFullMask, value, src); }
  __device__ __forceinline__ unsigned ballot(bool predicate) const { return __ballot_sync(kFullMask, predicate); }
  __device__ __forceinline__ void sync() const { __syncwarp(kFullMask); }
};

template <int Q>
__global__ void __launch_bounds__(kThreads) obs_chunk_kernel(ObsChunkArgs a) {
  extern __shared__ float smem[];
  const int width = a.width;
  const int lane = int(threadIdx.x) % kWarpLanes, warp = int(threadIdx.x) / kWarpLanes;
  float* tri = smem;
  float* scratch = smem + obs::cuda_scratch_offset(width) + warp * obs::kMaxGroup;
  for (int i = warp; i < width; i += kCudaWarpsPerBlock) {
    const float* h_row = a.hinv + int64_t(i) * a.ldh;
    float* tri_row = tri + obs::tri_row_start(i, width) - i;
    for (int j = i + lane; j < width; j += kWarpLanes) tri_row[j] = h_row[j];
  }
  __syncthreads();
  const int64_t stride = int64_t(gridDim.x) * kCudaWarpsPerBlock;
  for (int64_t row = int64_t(blockIdx.x) * kCudaWarpsPerBlock + warp; row < a.rows; row += stride) {
    obs::obs_row<Q>(CudaWarp{}, tri, scratch, a.w + row * a.ldw, a.err + row * a.lde, a.keep + row * a.ldk, width, a.n,
                    a.m);
  }
}

template <int Q>
cudaError_t launch(const ObsChunkArgs& args, cudaStream_t stream) {
  const size_t smem = size_t(obs::cuda_smem_bytes(args.width));
  int device = 0, sms = 0, blocks_per_sm = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (status == cudaSuccess)
    status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, obs_chunk_kernel<Q>, kThreads, smem);
  if (status != cudaSuccess) return status;
  const int64_t blocks = obs::cuda_grid_blocks(args.rows, sms, blocks_per_sm);
  obs_chunk_kernel<Q><<<unsigned(blocks), kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sparsegpt_obs_chunk(const ObsChunkArgs& args, cudaStream_t stream) {
  if (args.width < 1 || args.width > obs::kCudaMaxChunk || args.m < 0 || args.m > obs::kMaxGroup ||
      (args.m > 0 && (args.width % args.m != 0 || args.n < 1 || args.n >= args.m))) {
    return cudaErrorInvalidValue;
  }
  if (args.rows == 0) return cudaSuccess;
  switch (obs::register_columns(args.width)) {
    case 1: return launch<1>(args, stream);
    case 2: return launch<2>(args, stream);
    case 3: return launch<3>(args, stream);
    default: return launch<4>(args, stream);
  }
}

}  // namespace prunekit::cuda
