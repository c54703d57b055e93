// Torch-free CUDA kernels of y = x W^T + b with W in prunekit's 2:4 layout (prunekit/format24.h):
// values (rows, k/2) and metadata, fp32 accumulation, output in x's dtype. Three kernels:
//   linear24_cutlass_sm80   CUTLASS 2.x sparse GEMM (mma.sp, sm_80 / sm_89): W is operand A, so
//                           torch's metadata is used as it is; writes y^T.
//   linear24_cutlass_sm90   CUTLASS 3.x sparse GEMM (wgmma.sp, sm_90a) with the metadata converted
//                           to its own layout (prunekit/format24_sm90.h); writes y.
//   linear24_decode         batches of 1-16 rows (any arch from sm_80): reads values and metadata
//                           straight from memory, expands each group to dense fragments in
//                           registers and runs dense mma.sync; writes y.
// Launchers are host functions on the given stream; they return cudaErrorInvalidValue for
// arguments outside their contract (the ATen glue checks first, with messages).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "prunekit/format24.h"

namespace prunekit::cuda {

enum class Linear24Type : int { kFloat16, kBFloat16 };

struct Linear24Args {
  const void* x;       // (batch, k) row-major, 16-byte aligned
  const void* values;  // (rows, k/2) row-major, 16-byte aligned
  const void* meta;    // torch's layout (sm80, decode) or the sm90 buffer (sm90)
  const void* bias;    // (rows,) in the data type, 16-byte aligned; nullptr for none
  void* y;             // output (see each launcher), 16-byte aligned
  int64_t batch;
  int64_t rows;
  int64_t k;
  Linear24Type type;
};

// ---- CUTLASS 2.x, sm_80 ----
// Shape contract: rows % 32 == 0 (format24), k % kSm80TileK == 0 (a sparse K tile never runs
// past the metadata: out-of-range metadata would be read as zero, which is not a valid code),
// batch % kSm80BatchAlignment == 0 (16-byte accesses of x and y^T). y is y^T: (rows, batch)
// row-major.
constexpr int64_t kSm80TileK = 64;
constexpr int64_t kSm80BatchAlignment = 8;
cudaError_t linear24_cutlass_sm80(const Linear24Args& args, cudaStream_t stream);

// ---- CUTLASS 3.x, sm_90a ----
// meta: the format24::sm90 buffer of the (rows, k) weight. Contract: rows % 32 == 0, k % 32 == 0,
// batch >= 1 (TMA clips the edges); y (batch, rows) row-major. Small batches share tiles out
// along k (stream-K) through `workspace` (linear24_cutlass_sm90_workspace_bytes bytes; CUTLASS
// initialises it). sm_count: the device's multiprocessors. Only an sm_90a build runs these kernels;
// the glue checks the device and the build's archs first.
size_t linear24_cutlass_sm90_workspace_bytes(const Linear24Args& args, int sm_count);
cudaError_t linear24_cutlass_sm90(const Linear24Args& args, void* workspace, int sm_count, cudaStream_t stream);

// The sm90 metadata buffer (format24::sm90::word_count(rows, k) 16-bit words) from torch's
// 16-bit metadata (rows, k/16), on the device.
cudaError_t format24_meta_to_sm90(const void* meta, void* sm90_meta, int64_t rows, int64_t k, cudaStream_t stream);

// ---- small batches (1..kDecodeMaxBatch), sm_80 and newer ----
// Contract: 1 <= batch <= 16, rows % 32 == 0, k % 32 == 0; y (batch, rows) row-major. A block
// owns 32 rows and all of k (prunekit/linear24_decode.h), so there is no workspace.
constexpr int64_t kDecodeMaxBatch = 16;
cudaError_t linear24_decode(const Linear24Args& args, cudaStream_t stream);

}  // namespace prunekit::cuda
