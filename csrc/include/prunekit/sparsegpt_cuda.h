// Torch-free CUDA launcher of SparseGPT's fused in-block OBS updates (csrc/core/cuda/
// sparsegpt_obs_block_simt_sm80.cu). The glue (csrc/cuda/sparsegpt_ops.cu) picks the mask of an
// unstructured block before the launch and applies the errors to later columns with cuBLAS after it.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "prunekit/obs_block_layout.h"

namespace prunekit::cuda {

// One chunk of at most obs::kCudaMaxChunk columns (a multiple of m for N:M), every pointer at the
// chunk's first column of row 0 (hinv: the chunk's diagonal slice of the upper inverse-Hessian
// factor), each with its row stride.
struct ObsChunkArgs {
  float* w;
  int64_t ldw;
  const float* hinv;
  int64_t ldh;
  float* err;
  int64_t lde;
  bool* keep;  // read for unstructured (m == 0), written for N:M
  int64_t ldk;
  int64_t rows;
  int width;
  int n;
  int m;
};

// cudaErrorInvalidValue for a width or (n, m) the kernel does not take (the glue never asks).
cudaError_t sparsegpt_obs_chunk(const ObsChunkArgs& args, cudaStream_t stream);

}  // namespace prunekit::cuda
