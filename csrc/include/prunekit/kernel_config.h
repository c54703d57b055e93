// The CPU kernel table (XNNPACK's src/configs style): for each instruction-set variant, the kernel
// of every family and the facts the ops need about it, filled once. The ops look up the table of
// the selected variant once per call; the C++ tests walk the tables of every runnable variant.
// Which variants were compiled in is known only to kernel_config.cc.
#pragma once

#include <cstdint>

#include "prunekit/isa.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {

using ObsBlockUpdateFn = void (*)(const ObsBlockArgs&, RowRange);
using BitmapGemvFn = Status (*)(const BitmapWeightView&, const GemvArgs&, RowRange);
using BitmapSpmmFn = Status (*)(const BitmapWeightView&, const SpmmArgs&, RowRange);
using BitmapBf16GemvFn = Status (*)(const BitmapWeightView&, const GemvBf16Args&, RowRange);
using BitmapBf16SpmmFn = Status (*)(const BitmapWeightView&, const AmxSpmmArgs&, RowRange);
using PackedXElementsFn = int64_t (*)(int64_t batch, int64_t k);
using PackXFn = void (*)(const uint16_t* x, int64_t batch, int64_t k, uint16_t* packed, int64_t chunk_begin,
                         int64_t chunk_end);
using Csr16GemvFn = Status (*)(const Csr16WeightView&, const GemvArgs&, RowRange);
using Csr16SpmmFn = Status (*)(const Csr16WeightView&, const SpmmArgs&, RowRange);
using TransposeFn = void (*)(const float* src, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst, RowRange);

// The AMX bf16 SpMM and its packing of x: all null where AMX is not compiled in or not usable.
struct AmxBf16Kernels {
  PackedXElementsFn packed_x_elements = nullptr;
  PackXFn pack_x = nullptr;
  BitmapBf16SpmmFn spmm = nullptr;
};

struct CpuKernelConfig {
  Isa isa = Isa::kScalar;
  ObsBlockUpdateFn obs_block_update = nullptr;
  BitmapGemvFn bitmap_gemv = nullptr;
  BitmapSpmmFn bitmap_spmm = nullptr;
  // The vector width in columns of X of bitmap_spmm where it lacks masked vectors (1 where it has
  // them, or none at all): the vector-extension builds run a tile narrower than this in scalar
  // code, so the linear ops pad their batch to a multiple of it.
  int64_t bitmap_spmm_lanes = 1;
  // bf16 x bf16 GEMV (AVX-512 BF16 CPUs), else null: callers then widen x and use bitmap_gemv.
  BitmapBf16GemvFn bitmap_bf16_gemv = nullptr;
  // The largest batch the bitmap op runs bitmap_bf16_gemv for, on chunks of kGemvMaxBatch rows
  // (one weight pass each) past kGemvMaxBatch: without AMX, up to 8 rows beat widening x for the
  // fp32 SpMM at every sparsity (past 8 the SpMM wins from 0.7-0.9).
  int64_t bitmap_bf16_gemv_max_batch = 0;
  // bf16 x bf16 SpMM past the GEMV's batches (AMX), else null: callers widen x, use bitmap_spmm.
  AmxBf16Kernels bitmap_bf16_amx;
  Csr16GemvFn csr16_gemv = nullptr;
  // How csr16_gemv reads x: "loads" (one scalar load per nonzero) or "gather" (AVX-512 gathers).
  const char* csr16_gemv_x = "loads";
  // The largest batch the CSR16 op runs csr16_gemv for (csr16_spmm above): the GEMV gathers x once
  // per nonzero and batch row, the SpMM loads one row of x^T per nonzero.
  int64_t csr16_gemv_max_batch = kGemvMaxBatch;
  Csr16SpmmFn csr16_spmm = nullptr;
  int64_t csr16_spmm_lanes = 1;  // as bitmap_spmm_lanes, for csr16_spmm
  TransposeFn transpose_f32 = nullptr;
};

// The table of the selected variant (selected_isa_id()).
const CpuKernelConfig& cpu_kernel_config();
// The table of one variant, filled on first use (thread-safe); `isa` must be in runnable_isas().
const CpuKernelConfig& cpu_kernel_config(Isa isa);

}  // namespace prunekit::cpu
