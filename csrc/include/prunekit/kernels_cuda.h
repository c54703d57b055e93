// Torch-free CUDA kernels on raw device pointers (launchers are host functions). Errors found in
// the data are reported through error_index: a device uint64 the caller sets to kNoError; the
// kernels lower it (atomicMin) to the flat index row * k + col of the first offending entry.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "prunekit/dtypes.h"

namespace prunekit::cuda {

constexpr unsigned long long kNoError = ~0ull;

// See prunekit/format24.h for the layout; rows and k must satisfy its alignment.
cudaError_t format24_compress(const void* dense, void* values, void* meta, int64_t rows, int64_t k, int element_bytes,
                              bool is_float, unsigned long long* error_index, cudaStream_t stream);

cudaError_t format24_decompress(const void* values, const void* meta, void* dense, int64_t rows, int64_t k,
                                int element_bytes, unsigned long long* error_index, cudaStream_t stream);

// N:M keep-mask over rows of length k (k % m == 0, 0 <= n <= m); error_index flags a NaN/Inf.
cudaError_t nm_mask_select(const void* scores, ScoreType type, bool* keep, int64_t rows, int64_t k, int64_t n,
                           int64_t m, unsigned long long* error_index, cudaStream_t stream);

}  // namespace prunekit::cuda
