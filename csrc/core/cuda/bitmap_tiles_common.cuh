// Device code shared by the tiled bitmap kernels (bitmap_tiles_*.cu): element types, the warp
// scan, cp.async / ldmatrix / mma wrappers, and the block epilogue with its split-K reduction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "prunekit/bitmap_tiles.h"
#include "prunekit/bitmap_tiles_cuda.h"

namespace prunekit::cuda::tiles_detail {

constexpr unsigned kFullMask = 0xffffffffu;

// Element types: storage and fp32 conversions (round to nearest even on the way out).
struct F32 {
  using Storage = float;
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};
struct BF16 {
  using Storage = uint16_t;
  static __device__ __forceinline__ float to_float(uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); }
  static __device__ __forceinline__ uint16_t from_float(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
};
struct F16 {
  using Storage = uint16_t;
  static __device__ __forceinline__ float to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
  static __device__ __forceinline__ uint16_t from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

__device__ __forceinline__ int warp_inclusive_scan(int value, int lane) {
#pragma unroll
  for (int delta = 1; delta < 32; delta <<= 1) {
    const int other = __shfl_up_sync(kFullMask, value, delta);
    if (lane >= delta) value += other;
  }
  return value;
}

// NaN passes through, as in F.relu / F.relu6 (a NaN compares false).
__device__ __forceinline__ float activate(float v, int activation) {
  if (activation == 0) return v;
  v = v < 0.0f ? 0.0f : v;
  return activation == 2 && v > 6.0f ? 6.0f : v;
}

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global -> shared, bypassing L1; zero-filled where !valid (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row_address)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row_address)));
  }
}

// D = A B + D, m16n8k16, fp32 accumulators (fragments as in prunekit/bitmap_tiles.h).
template <typename E>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<E, BF16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Where a block's sums go. With splits > 1, each block writes its partial tile to `partials`
// ([splits][images][partial_rows][partial_cols] fp32) and the last block of a tile (counted in
// `counters`, zeroed before the launch) adds them up in split order (deterministic) and writes y.
struct Epilogue {
  const void* bias;  // of bias_type: read as the sums are written (no conversion pass per call)
  ScoreType bias_type;
  int activation;
  void* y;  // of the launch's element type, already offset to the first batch column
  int64_t y_stride_n;
  int64_t y_stride_m;
  int64_t y_stride_image;
  int64_t rows;
  int64_t batch;
  float* partials;
  unsigned* counters;
  int64_t splits;
  int64_t images;
  int64_t partial_rows;
  int64_t partial_cols;
  int64_t tiles_per_image;  // counters per image
};

__device__ __forceinline__ float bias_at(const Epilogue& e, int64_t row) {
  if (!e.bias) return 0.0f;
  switch (e.bias_type) {
    case ScoreType::kBFloat16: return BF16::to_float(static_cast<const uint16_t*>(e.bias)[row]);
    case ScoreType::kFloat16: return F16::to_float(static_cast<const uint16_t*>(e.bias)[row]);
    default: return static_cast<const float*>(e.bias)[row];
  }
}

// y of the block's tile R (bm x bn fp32 in shared memory, row stride ldr; rows m0.., batch
// columns n0..), with bias and activation, in y's unit-stride order.
template <typename E>
__device__ void write_tile(const float* R, int ldr, int64_t m0, int64_t n0, int bm, int bn, const Epilogue& e,
                           int64_t image) {
  auto* y = static_cast<typename E::Storage*>(e.y) + image * e.y_stride_image;
  const bool rows_fastest = e.y_stride_m == 1;
  for (int i = threadIdx.x; i < bm * bn; i += blockDim.x) {
    const int m = rows_fastest ? i % bm : i / bn;
    const int n = rows_fastest ? i / bm : i % bn;
    const int64_t row = m0 + m, col = n0 + n;
    if (row >= e.rows || col >= e.batch) continue;
    const float v = activate(R[m * ldr + n] + bias_at(e, row), e.activation);
    y[col * e.y_stride_n + row * e.y_stride_m] = E::from_float(v);
  }
}

// Called by every thread of the block once R holds the block's sums (synchronised).
template <typename E>
__device__ void finish_tile(float* R, int ldr, int64_t m0, int64_t n0, int bm, int bn, int64_t split, int64_t image,
                            int64_t tile, const Epilogue& e) {
  if (e.splits == 1) {
    write_tile<E>(R, ldr, m0, n0, bm, bn, e, image);
    return;
  }
  const int64_t plane = e.partial_rows * e.partial_cols;
  float* mine = e.partials + (split * e.images + image) * plane;
  for (int i = threadIdx.x; i < bm * bn; i += blockDim.x) {
    const int m = i / bn, n = i % bn;
    mine[(m0 + m) * e.partial_cols + n0 + n] = R[m * ldr + n];
  }
  __threadfence();
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) {
    last = atomicAdd(e.counters + image * e.tiles_per_image + tile, 1u) == unsigned(e.splits - 1);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < bm * bn; i += blockDim.x) {
    const int m = i / bn, n = i % bn;
    float sum = 0.0f;
    for (int64_t s = 0; s < e.splits; ++s) {
      sum += __ldcg(e.partials + (s * e.images + image) * plane + (m0 + m) * e.partial_cols + n0 + n);
    }
    R[m * ldr + n] = sum;
  }
  __syncthreads();
  write_tile<E>(R, ldr, m0, n0, bm, bn, e, image);
}

// Epilogue fields of a launch; splits > 1 lays out the workspace (partials, then counters).
inline Epilogue make_epilogue(const TilesGemm& args, void* y, int64_t batch, int64_t splits, int64_t partial_rows,
                              int64_t partial_cols, int64_t tiles_per_image, void* workspace) {
  Epilogue e{
      args.bias,      args.bias_type, args.activation, y,       args.y_stride_n, args.y_stride_m, args.y_stride_image,
      args.grid.rows, batch,          nullptr,         nullptr, splits,          args.images,     partial_rows,
      partial_cols,   tiles_per_image};
  if (splits > 1) {
    e.partials = static_cast<float*>(workspace);
    e.counters = reinterpret_cast<unsigned*>(e.partials + splits * args.images * partial_rows * partial_cols);
  }
  return e;
}

inline size_t workspace_bytes(int64_t splits, int64_t images, int64_t partial_rows, int64_t partial_cols,
                              int64_t tiles_per_image) {
  if (splits <= 1) return 0;
  return size_t(splits * images * partial_rows * partial_cols) * sizeof(float) +
         size_t(images * tiles_per_image) * sizeof(unsigned);
}

// Zeroes the counters of a split launch (the partials are written before they are read).
inline cudaError_t clear_counters(const Epilogue& e, cudaStream_t stream) {
  if (e.splits <= 1) return cudaSuccess;
  return cudaMemsetAsync(e.counters, 0, size_t(e.images * e.tiles_per_image) * sizeof(unsigned), stream);
}

// ---- what the two decode kernels share ----
// A warp's start on tile t: its lane's word pair, where the pair's values start in the run, and
// whether the run fits (warp-uniform).
struct TileHead {
  uint32_t pair;
  uint32_t start;  // the pair's first value, relative to the run
  int64_t begin;   // the run's first value in tile_values
  bool fits;
};
__device__ __forceinline__ TileHead tile_head(const uint32_t* pairs, const int64_t* tile_offsets, int64_t size,
                                              int64_t tile, int lane) {
  const uint32_t pair = __ldg(pairs + tile * tiles::kWarp + lane);
  const int64_t begin = __ldg(tile_offsets + tile), end = __ldg(tile_offsets + tile + 1);
  const int count = __popc(pair);
  const int inclusive = warp_inclusive_scan(count, lane);
  const int marks = __shfl_sync(kFullMask, inclusive, 31);
  return TileHead{pair, uint32_t(inclusive - count), begin, tiles::run_fits(begin, end, marks, size)};
}

// The warps' row sums red[warp][16][bn] added per panel into R[panels_per_block * 16][bn] (the
// warps of local panel q are q, q + P, ...); NaN rows for a panel with a tile that did not fit.
__device__ __forceinline__ void add_warp_sums(const float* red, const int* bad_warp, float* R, int panels_per_block,
                                              int bn) {
  const int warps_per_panel = tiles::kDecodeWarps / panels_per_block;
  for (int i = threadIdx.x; i < panels_per_block * tiles::kTileRows * bn; i += blockDim.x) {
    const int local = i / (tiles::kTileRows * bn), rest = i % (tiles::kTileRows * bn);
    float sum = 0.0f;
    bool bad = false;
    for (int q = 0; q < warps_per_panel; ++q) {
      const int warp = local + q * panels_per_block;
      sum += red[warp * tiles::kTileRows * bn + rest];
      bad = bad || bad_warp[warp];
    }
    R[i] = bad ? __int_as_float(0x7fc00000) : sum;
  }
}

// The decode kernels (bitmap_tiles_decode_{simt,mma}_sm80.cu): one launch of up to 16 batch
// columns (`slots` rounded up); workspace sized by decode_workspace.
struct DecodeLaunch {
  TilesGemm args;  // x and y already offset to the launch's first batch column
  int64_t batch;   // columns in this launch
  int slots;       // 1, 2, 4, 8 or 16
  tiles::DecodePlan plan;
  void* workspace;
};
inline size_t decode_workspace(const TilesGemm& args, const tiles::DecodePlan& plan, int slots) {
  return workspace_bytes(plan.splits, args.images, plan.groups * plan.panels_per_block * tiles::kTileRows, slots,
                         plan.groups);
}
cudaError_t launch_decode_simt(const DecodeLaunch& launch, cudaStream_t stream);
cudaError_t launch_decode_mma(const DecodeLaunch& launch, cudaStream_t stream);
cudaError_t launch_gemm_mma(const TilesGemm& args, const tiles::GemmPlan& plan, void* workspace, cudaStream_t stream);

}  // namespace prunekit::cuda::tiles_detail
