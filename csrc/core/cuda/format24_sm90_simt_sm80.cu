// The 2:4 metadata of the sm_90a GEMMs from torch's layout (prunekit/format24_sm90.h) on the GPU:
// one thread per output word, so every output word is written exactly once (padding as zero).
#include "prunekit/format24_sm90.h"
#include "prunekit/linear24_cuda.h"

namespace prunekit::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void format24_meta_to_sm90_kernel(const uint16_t* __restrict__ meta, uint16_t* __restrict__ sm90_meta,
                                             int64_t rows, int64_t k, int64_t words) {
  const int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index < words) format24::sm90::convert_word(meta, sm90_meta, index, rows, k);
}

}  // namespace

cudaError_t format24_meta_to_sm90(const void* meta, void* sm90_meta, int64_t rows, int64_t k, cudaStream_t stream) {
  if (rows <= 0 || k <= 0 || rows % 32 || k % 32) return cudaErrorInvalidValue;
  const int64_t words = format24::sm90::word_count(rows, k);
  const int64_t blocks = (words + kThreads - 1) / kThreads;
  format24_meta_to_sm90_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(
      static_cast<const uint16_t*>(meta), static_cast<uint16_t*>(sm90_meta), rows, k, words);
  return cudaGetLastError();
}

}  // namespace prunekit::cuda
