// Run-time choice among the compiled ISA variants of each CPU kernel family.
#pragma once

#include "prunekit/isa.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {

using ObsBlockFn = void (*)(const ObsBlockArgs&, RowRange);

inline ObsBlockFn select_obs_block() {
  const Isa isa = selected_isa_id();
#if defined(PRUNEKIT_HAVE_AVX512)
  if (isa == Isa::kAvx512) return &obs_block_update_avx512;
#endif
#if defined(PRUNEKIT_HAVE_AVX2)
  if (isa == Isa::kAvx2 || isa == Isa::kAvx512) return &obs_block_update_avx2;
#endif
#if defined(PRUNEKIT_HAVE_NEON)
  if (isa == Isa::kNeon) return &obs_block_update_neon;
#endif
  return &obs_block_update_scalar;
}

}  // namespace prunekit::cpu

namespace prunekit::cpu {

using BitmapGemvFn = Status (*)(const BitmapWeightView&, const GemvArgs&, RowRange);
using BitmapSpmmFn = Status (*)(const BitmapWeightView&, const SpmmArgs&, RowRange);

inline BitmapGemvFn select_bitmap_gemv() {
  const Isa isa = selected_isa_id();
#if defined(PRUNEKIT_HAVE_AVX512)
  if (isa == Isa::kAvx512) return &bitmap_gemv_avx512;
#endif
#if defined(PRUNEKIT_HAVE_AVX2)
  if (isa == Isa::kAvx2) return &bitmap_gemv_avx2;
#endif
#if defined(PRUNEKIT_HAVE_NEON)
  if (isa == Isa::kNeon) return &bitmap_gemv_neon;
#endif
  return &bitmap_gemv_scalar;
}

inline BitmapSpmmFn select_bitmap_spmm() {
  const Isa isa = selected_isa_id();
#if defined(PRUNEKIT_HAVE_AVX512)
  if (isa == Isa::kAvx512) return &bitmap_spmm_avx512;
#endif
#if defined(PRUNEKIT_HAVE_AVX2)
  if (isa == Isa::kAvx2) return &bitmap_spmm_avx2;
#endif
#if defined(PRUNEKIT_HAVE_NEON)
  if (isa == Isa::kNeon) return &bitmap_spmm_neon;
#endif
  return &bitmap_spmm_scalar;
}

// The vector width in columns of X of the selected bitmap SpMM where it lacks masked vectors (1
// where it has them, or none at all): the vector-extension builds run a tile narrower than this
// in scalar code, so the linear ops pad their batch to a multiple of it.
inline int64_t bitmap_spmm_lanes() {
  const Isa isa = selected_isa_id();
  return isa == Isa::kAvx2 ? 8 : isa == Isa::kNeon ? 4 : 1;
}

using BitmapGemvBf16Fn = Status (*)(const BitmapWeightView&, const GemvBf16Args&, RowRange);

// The bf16 x bf16 GEMV where the selected variant is avx512 and the CPU has AVX-512 BF16, else
// null (callers then widen x and use the fp32 GEMV).
inline BitmapGemvBf16Fn select_bitmap_gemv_bf16() {
#if defined(PRUNEKIT_HAVE_AVX512BF16)
  if (selected_isa_id() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16")) return &bitmap_bf16_gemv_avx512bf16;
#endif
  return nullptr;
}

// The AMX bf16 SpMM where the selected variant is avx512 and the CPU and OS run AMX-BF16, else
// false (callers then widen x and use the fp32 SpMM).
inline bool select_bitmap_spmm_amx() {
#if defined(PRUNEKIT_HAVE_AMX)
  return selected_isa_id() == Isa::kAvx512 && amx_bf16_usable();
#else
  return false;
#endif
}

using Csr16GemvFn = Status (*)(const Csr16WeightView&, const GemvArgs&, RowRange);

inline Csr16GemvFn select_csr16_gemv() {
  const Isa isa = selected_isa_id();
#if defined(PRUNEKIT_HAVE_AVX512)
  if (isa == Isa::kAvx512) return &csr16_gemv_avx512;
#endif
#if defined(PRUNEKIT_HAVE_AVX2)
  if (isa == Isa::kAvx2) return &csr16_gemv_avx2;
#endif
  return &csr16_gemv_scalar;
}

// The CSR16 GEMV's batches (the op runs its SpMM above): the GEMV gathers x once per nonzero and
// batch row, the SpMM loads one row of x^T per nonzero. With AVX-512 the SpMM wins from batch 4
// (4096^2, 2 threads, GEMV vs SpMM ms: at 90%, 0.40 vs 0.79-0.86 at batch 2, 0.67 vs 0.82-0.89 at
// 3, 1.02 vs 0.85-0.93 at 4; at 70%, 2.0 vs 2.6 at 3, 2.6 vs 2.5 at 4); the vector-extension SpMM
// computes whole vectors (a batch of 4 padded to 8 on AVX2, no faster than the GEMV there), so the
// others keep batch 4.
inline int64_t csr16_gemv_max_batch() { return selected_isa_id() == Isa::kAvx512 ? 3 : kGemvMaxBatch; }

using Csr16SpmmFn = Status (*)(const Csr16WeightView&, const SpmmArgs&, RowRange);

inline Csr16SpmmFn select_csr16_spmm() {
  const Isa isa = selected_isa_id();
#if defined(PRUNEKIT_HAVE_AVX512)
  if (isa == Isa::kAvx512) return &csr16_spmm_avx512;
#endif
#if defined(PRUNEKIT_HAVE_AVX2)
  if (isa == Isa::kAvx2) return &csr16_spmm_avx2;
#endif
  return &csr16_spmm_scalar;
}

// As bitmap_spmm_lanes, for the selected CSR16 SpMM (its portable build, also the one on ARM,
// has 16-byte vectors).
inline int64_t csr16_spmm_lanes() {
  const Isa isa = selected_isa_id();
  return isa == Isa::kAvx512 ? 1 : isa == Isa::kAvx2 ? 8 : 4;
}

using TransposeFn = void (*)(const float*, int64_t, int64_t, float*, int64_t, RowRange);

inline TransposeFn select_transpose_f32() {
  const Isa isa = selected_isa_id();
#if defined(PRUNEKIT_HAVE_AVX512)
  if (isa == Isa::kAvx512) return &transpose_f32_avx512;
#endif
#if defined(PRUNEKIT_HAVE_AVX2)
  if (isa == Isa::kAvx2) return &transpose_f32_avx2;
#endif
  return &transpose_f32_scalar;
}

}  // namespace prunekit::cpu
