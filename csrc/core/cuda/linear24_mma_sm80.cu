// Small batches (1-16 rows of x) of y = x W^T + b with W in the 2:4 layout, from sm_80 on: a
// memory-bound kernel that reads each value and metadata element once, straight from memory (no
// padding of x to a GEMM tile), spreads each group over dense mma.sync fragments in registers and
// accumulates in fp32. The index bookkeeping is prunekit/linear24_decode.h.
//
// A block owns 32 output rows and all of k: its 16 warps take the 64-column chunks round robin
// (loads of the next chunk issued before the current one is multiplied), then add their partial
// sums in shared memory and write y with the bias. No cross-block reduction, no workspace.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "prunekit/linear24_cuda.h"
#include "prunekit/linear24_decode.h"

namespace prunekit::cuda {
namespace {

using namespace prunekit::linear24;

constexpr int kThreads = kBlockWarps * 32;

template <bool kBF16>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

template <bool kBF16>
__device__ __forceinline__ float to_float(uint16_t bits) {
  if constexpr (kBF16) return __bfloat162float(__ushort_as_bfloat16(bits));
  return __half2float(__ushort_as_half(bits));
}

template <bool kBF16>
__device__ __forceinline__ uint16_t from_float(float value) {
  if constexpr (kBF16) return __bfloat16_as_ushort(__float2bfloat16_rn(value));
  return __half_as_ushort(__float2half_rn(value));
}

// One chunk's operands of a lane: values of its 4 rows (16 bytes each), their codes, and x at its
// 16 columns for each n8 tile (two 16-byte halves).
template <int kNTiles>
struct Chunk {
  uint4 values[2][2];  // [m tile][upper half]
  uint32_t codes[2][2];
  uint4 x[kNTiles][2];
};

struct Problem {
  const uint16_t* x;
  const uint16_t* values;
  const uint16_t* meta;
  const uint16_t* bias;
  uint16_t* y;
  int64_t batch, rows, k;
};

template <int kNTiles>
__device__ __forceinline__ void load_chunk(Chunk<kNTiles>& chunk, const Problem& p, int lane, int64_t row0,
                                           int64_t index) {
  const bool has_cols = lane_has_cols(lane, index, p.k);
  const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + a_row(lane, m, h);
      chunk.values[m][h] =
          has_cols ? __ldg(reinterpret_cast<const uint4*>(p.values + lane_values_offset(lane, row, index, p.k))) : zero;
      chunk.codes[m][h] = has_cols ? __ldg(p.meta + lane_meta_offset(lane, row, index, p.rows)) : 0u;
    }
  }
  const int64_t col = lane_first_col(lane, index);
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) {
    const int64_t n = 8 * j + lane_row(lane);
    const bool load = has_cols && n < p.batch;
    const uint4* source = reinterpret_cast<const uint4*>(p.x + n * p.k + col);
    chunk.x[j][0] = load ? __ldg(source) : zero;
    chunk.x[j][1] = load ? __ldg(source + 1) : zero;
  }
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <bool kBF16, int kNTiles>
__device__ __forceinline__ void multiply_chunk(float (&acc)[2][kNTiles][4], const Chunk<kNTiles>& chunk,
                                               const uint32_t* selectors) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {  // k-step: group 4t+s of each row
    // x at the group's columns: 8 bytes, in the first 16-byte half for s = 0, 1.
    uint32_t b[kNTiles][2];
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      b[j][0] = word(chunk.x[j][s / 2], 2 * (s % 2));
      b[j][1] = word(chunk.x[j][s / 2], 2 * (s % 2) + 1);
    }
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      uint32_t a[4];
      a_fragment(word(chunk.values[m][0], s), selectors[(chunk.codes[m][0] >> (4 * s)) & 15u],
                 word(chunk.values[m][1], s), selectors[(chunk.codes[m][1] >> (4 * s)) & 15u], a);
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) mma_16816<kBF16>(acc[m][j], a, b[j][0], b[j][1]);
    }
  }
}

template <bool kBF16, int kNTiles>
__global__ void __launch_bounds__(kThreads, 1) linear24_decode_kernel(Problem p) {
  constexpr int kCols = 8 * kNTiles;
  __shared__ uint32_t selectors[16];
  __shared__ float partial[kBlockWarps][kWarpRows][kCols + 1];  // +1: no bank conflicts on the writes
  if (threadIdx.x < 16) selectors[threadIdx.x] = expand_selectors(threadIdx.x);
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row0 = int64_t(blockIdx.x) * kWarpRows;
  const int64_t chunks = chunk_count(p.k);
  float acc[2][kNTiles][4] = {};
  int64_t index = warp;
  if (index < chunks) {
    Chunk<kNTiles> current;
    load_chunk(current, p, lane, row0, index);
    for (; index < chunks; index += kBlockWarps) {
      Chunk<kNTiles> next;
      const bool more = index + kBlockWarps < chunks;
      if (more) load_chunk(next, p, lane, row0, index + kBlockWarps);
      multiply_chunk<kBF16>(acc, current, selectors);
      if (more) current = next;
    }
  }

  const int g = lane_row(lane), t = lane_quad(lane);
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      partial[warp][16 * m + g][8 * j + 2 * t] = acc[m][j][0];
      partial[warp][16 * m + g][8 * j + 2 * t + 1] = acc[m][j][1];
      partial[warp][16 * m + g + 8][8 * j + 2 * t] = acc[m][j][2];
      partial[warp][16 * m + g + 8][8 * j + 2 * t + 1] = acc[m][j][3];
    }
  }
  __syncthreads();
  // Consecutive threads take consecutive rows of one output row of y: 64-byte stores.
  for (int o = threadIdx.x; o < kWarpRows * p.batch; o += kThreads) {
    const int r = o % kWarpRows, n = o / kWarpRows;
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kBlockWarps; ++w) sum += partial[w][r][n];
    if (p.bias != nullptr) sum += to_float<kBF16>(p.bias[row0 + r]);
    p.y[n * p.rows + row0 + r] = from_float<kBF16>(sum);
  }
}

template <bool kBF16, int kNTiles>
cudaError_t launch(const Problem& p, cudaStream_t stream) {
  const dim3 grid(unsigned(row_tiles(p.rows)));
  linear24_decode_kernel<kBF16, kNTiles><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t linear24_decode(const Linear24Args& args, cudaStream_t stream) {
  if (args.batch < 1 || args.batch > kDecodeMaxBatch || args.rows < kWarpRows || args.rows % kWarpRows || args.k < 32 ||
      args.k % 32 || row_tiles(args.rows) > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  const Problem p{static_cast<const uint16_t*>(args.x),
                  static_cast<const uint16_t*>(args.values),
                  static_cast<const uint16_t*>(args.meta),
                  static_cast<const uint16_t*>(args.bias),
                  static_cast<uint16_t*>(args.y),
                  args.batch,
                  args.rows,
                  args.k};
  const bool bf16 = args.type == Linear24Type::kBFloat16;
  if (args.batch <= 8) return bf16 ? launch<true, 1>(p, stream) : launch<false, 1>(p, stream);
  return bf16 ? launch<true, 2>(p, stream) : launch<false, 2>(p, stream);
}

}  // namespace prunekit::cuda
