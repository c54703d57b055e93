// SparseGPT's solve on CUDA: the block loop shared with every device (sparsegpt_glue.h: the
// unstructured mask of a block by a stable sort on the GPU, the lazy inter-block update as one
// cuBLAS GEMM per block) with the fused in-block kernel of csrc/core/cuda for chunks of up to 128
// columns (N:M chosen inside it). The Hessian accumulation (hessian_accumulate_) is composite ATen
// and runs here as it is; the factorisation is torch.linalg's, in python/prunekit/solvers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "prunekit/cuda_entry.h"
#include "prunekit/sparsegpt_cuda.h"
#include "prunekit/sparsegpt_glue.h"

namespace prunekit {
namespace {

at::Tensor sparsegpt_solve_cuda(at::Tensor& weight, const at::Tensor& hinv, double sparsity, int64_t n, int64_t m,
                                int64_t blocksize) {
  sparsegpt::check_solve_args(weight, hinv, sparsity, n, m, blocksize);
  const c10::cuda::CUDAGuard guard(weight.device());
  check_cuda_kernels_built_for_current_device("sparsegpt_solve_");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto fused_step = [stream](const sparsegpt::Chunk& c) {
    const cuda::ObsChunkArgs args{c.w.data_ptr<float>(),
                                  c.w.stride(0),
                                  c.hinv.data_ptr<float>(),
                                  c.hinv.stride(0),
                                  c.err.data_ptr<float>(),
                                  c.err.stride(0),
                                  c.keep.data_ptr<bool>(),
                                  c.keep.stride(0),
                                  c.w.size(0),
                                  int(c.w.size(1)),
                                  int(c.n),
                                  int(c.m)};
    const cudaError_t status = cuda::sparsegpt_obs_chunk(args, stream);
    TORCH_CHECK(status == cudaSuccess,
                "prunekit.sparsegpt_solve_: CUDA kernel launch failed: ", cudaGetErrorString(status));
  };
  return sparsegpt::blocked_solve(weight, hinv, sparsity, n, m, blocksize, obs::kCudaMaxChunk, fused_step);
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CUDA, m) { m.impl("sparsegpt_solve_", &sparsegpt_solve_cuda); }

}  // namespace prunekit
