// 2:4 compression / decompression on CUDA cores: one thread per meta element. Bandwidth-bound,
// built for sm_80 and sm_90a.
#include "prunekit/format24.h"
#include "prunekit/kernels_cuda.h"

namespace prunekit::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t work) { return unsigned((work + kThreads - 1) / kThreads); }

template <typename Bits, typename Meta>
__global__ void compress24_kernel(const Bits* __restrict__ dense, Bits* __restrict__ values, Meta* __restrict__ meta,
                                  int64_t rows, int64_t k, bool is_float, unsigned long long* error_index) {
  const format24::Layout layout = format24::layout_for_element_bytes(sizeof(Bits));
  const int64_t meta_cols = k / (4 * layout.groups_per_meta);
  const int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * meta_cols) return;
  const int64_t row = index / meta_cols, meta_col = index % meta_cols;
  uint32_t word = 0;
  for (int g = 0; g < layout.groups_per_meta; ++g) {
    const int64_t col = (meta_col * layout.groups_per_meta + g) * 4;
    const Bits* q = dense + row * k + col;
    const Bits e0 = q[0], e1 = q[1], e2 = q[2], e3 = q[3];
    const bool nz0 = format24::is_nonzero(e0, is_float), nz1 = format24::is_nonzero(e1, is_float);
    const bool nz2 = format24::is_nonzero(e2, is_float), nz3 = format24::is_nonzero(e3, is_float);
    if (int(nz0) + int(nz1) + int(nz2) + int(nz3) > 2) {
      atomicMin(error_index, static_cast<unsigned long long>(row * k + col));
      return;
    }
    const uint32_t nibble = format24::encode_group(nz0, nz1, nz3);
    const Bits entries[4] = {e0, e1, e2, e3};
    values[row * (k / 2) + col / 2] = entries[nibble & 3u];
    values[row * (k / 2) + col / 2 + 1] = entries[nibble >> 2];
    word |= nibble << (4 * g);
  }
  meta[format24::meta_offset(row, meta_col, rows, layout)] = Meta(word);
}

template <typename Bits, typename Meta>
__global__ void decompress24_kernel(const Bits* __restrict__ values, const Meta* __restrict__ meta,
                                    Bits* __restrict__ dense, int64_t rows, int64_t k,
                                    unsigned long long* error_index) {
  const format24::Layout layout = format24::layout_for_element_bytes(sizeof(Bits));
  const int64_t meta_cols = k / (4 * layout.groups_per_meta);
  const int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * meta_cols) return;
  const int64_t row = index / meta_cols, meta_col = index % meta_cols;
  const uint32_t word = uint32_t(meta[format24::meta_offset(row, meta_col, rows, layout)]);
  for (int g = 0; g < layout.groups_per_meta; ++g) {
    const int64_t col = (meta_col * layout.groups_per_meta + g) * 4;
    const uint32_t nibble = (word >> (4 * g)) & 0xfu;
    const uint32_t idx0 = nibble & 3u, idx1 = nibble >> 2;
    Bits* q = dense + row * k + col;
    if (idx0 >= idx1) {
      atomicMin(error_index, static_cast<unsigned long long>(row * k + col));
      q[0] = q[1] = q[2] = q[3] = Bits(0);
      continue;
    }
    Bits entries[4] = {Bits(0), Bits(0), Bits(0), Bits(0)};
    entries[idx0] = values[row * (k / 2) + col / 2];
    entries[idx1] = values[row * (k / 2) + col / 2 + 1];
    for (int i = 0; i < 4; ++i) q[i] = entries[i];
  }
}

template <typename Bits, typename Meta>
cudaError_t launch_compress(const void* dense, void* values, void* meta, int64_t rows, int64_t k, bool is_float,
                            unsigned long long* error_index, cudaStream_t stream) {
  const auto layout = format24::layout_for_element_bytes(sizeof(Bits));
  const int64_t work = rows * (k / (4 * layout.groups_per_meta));
  compress24_kernel<Bits, Meta>
      <<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const Bits*>(dense), static_cast<Bits*>(values),
                                                  static_cast<Meta*>(meta), rows, k, is_float, error_index);
  return cudaGetLastError();
}

template <typename Bits, typename Meta>
cudaError_t launch_decompress(const void* values, const void* meta, void* dense, int64_t rows, int64_t k,
                              unsigned long long* error_index, cudaStream_t stream) {
  const auto layout = format24::layout_for_element_bytes(sizeof(Bits));
  const int64_t work = rows * (k / (4 * layout.groups_per_meta));
  decompress24_kernel<Bits, Meta>
      <<<blocks_for(work), kThreads, 0, stream>>>(static_cast<const Bits*>(values), static_cast<const Meta*>(meta),
                                                  static_cast<Bits*>(dense), rows, k, error_index);
  return cudaGetLastError();
}

}  // namespace

cudaError_t format24_compress(const void* dense, void* values, void* meta, int64_t rows, int64_t k, int element_bytes,
                              bool is_float, unsigned long long* error_index, cudaStream_t stream) {
  switch (element_bytes) {
    case 1: return launch_compress<uint8_t, uint32_t>(dense, values, meta, rows, k, is_float, error_index, stream);
    case 2: return launch_compress<uint16_t, uint16_t>(dense, values, meta, rows, k, is_float, error_index, stream);
    default: return launch_compress<uint32_t, uint16_t>(dense, values, meta, rows, k, is_float, error_index, stream);
  }
}

cudaError_t format24_decompress(const void* values, const void* meta, void* dense, int64_t rows, int64_t k,
                                int element_bytes, unsigned long long* error_index, cudaStream_t stream) {
  switch (element_bytes) {
    case 1: return launch_decompress<uint8_t, uint32_t>(values, meta, dense, rows, k, error_index, stream);
    case 2: return launch_decompress<uint16_t, uint16_t>(values, meta, dense, rows, k, error_index, stream);
    default: return launch_decompress<uint32_t, uint16_t>(values, meta, dense, rows, k, error_index, stream);
  }
}

}  // namespace prunekit::cuda
