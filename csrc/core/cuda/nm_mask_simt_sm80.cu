// The N:M keep-mask on CUDA cores: one thread per group of m scores. Bandwidth-bound, built for
// sm_80 and sm_90a.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "prunekit/kernels_cuda.h"

namespace prunekit::cuda {
namespace {

constexpr int kThreads = 256;

__device__ double load_score(const void* scores, ScoreType type, int64_t i) {
  switch (type) {
    case ScoreType::kFloat32: return double(static_cast<const float*>(scores)[i]);
    case ScoreType::kFloat64: return static_cast<const double*>(scores)[i];
    case ScoreType::kFloat16: return double(__half2float(static_cast<const __half*>(scores)[i]));
    default: return double(__bfloat162float(static_cast<const __nv_bfloat16*>(scores)[i]));
  }
}

__global__ void nm_mask_kernel(const void* __restrict__ scores, ScoreType type, bool* __restrict__ keep, int64_t groups,
                               int64_t n, int64_t m, unsigned long long* error_index) {
  const int64_t group = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group >= groups) return;
  const int64_t base = group * m;
  for (int64_t i = 0; i < m; ++i) {
    const double s = load_score(scores, type, base + i);
    if (!isfinite(s)) {
      atomicMin(error_index, static_cast<unsigned long long>(base + i));
      return;
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    const double s = load_score(scores, type, base + i);
    int64_t rank = 0;
    for (int64_t j = 0; j < m && rank < n; ++j) {
      const double t = load_score(scores, type, base + j);
      rank += t > s || (t == s && j < i);
    }
    keep[base + i] = rank < n;
  }
}

}  // namespace

cudaError_t nm_mask_select(const void* scores, ScoreType type, bool* keep, int64_t rows, int64_t k, int64_t n,
                           int64_t m, unsigned long long* error_index, cudaStream_t stream) {
  const int64_t groups = rows * (k / m);
  nm_mask_kernel<<<unsigned((groups + kThreads - 1) / kThreads), kThreads, 0, stream>>>(scores, type, keep, groups, n,
                                                                                        m, error_index);
  return cudaGetLastError();
}

}  // namespace prunekit::cuda
