// The CPU kernel tables, one per instruction-set variant, and the one place that knows which
// variants were compiled in (PRUNEKIT_HAVE_<ISA>, defined by CMake per variant built).
#include "prunekit/kernel_config.h"

#include <string>
#include <vector>

namespace prunekit::cpu {
namespace {

CpuKernelConfig scalar_config() {
  CpuKernelConfig c;
  c.isa = Isa::kScalar;
  c.obs_block_update = &obs_block_update_scalar;
  c.bitmap_gemv = &bitmap_gemv_scalar;
  c.bitmap_spmm = &bitmap_spmm_scalar;
  c.bitmap_spmm_lanes = 1;
  c.csr16_gemv = &csr16_gemv_scalar;
  c.csr16_gemv_max_batch = kGemvMaxBatch;
  c.csr16_spmm = &csr16_spmm_scalar;
  c.csr16_spmm_lanes = 4;  // the portable build, also the one on ARM, has 16-byte vectors
  c.transpose_f32 = &transpose_f32_scalar;
  return c;
}

#if defined(PRUNEKIT_HAVE_AVX2)
CpuKernelConfig avx2_config() {
  CpuKernelConfig c = scalar_config();
  c.isa = Isa::kAvx2;
  c.obs_block_update = &obs_block_update_avx2;
  c.bitmap_gemv = &bitmap_gemv_avx2;
  c.bitmap_spmm = &bitmap_spmm_avx2;
  c.bitmap_spmm_lanes = 8;
  c.csr16_gemv = &csr16_gemv_avx2;
  c.csr16_spmm = &csr16_spmm_avx2;
  c.csr16_spmm_lanes = 8;
  c.transpose_f32 = &transpose_f32_avx2;
  return c;
}
#endif

#if defined(PRUNEKIT_HAVE_AVX512)
CpuKernelConfig avx512_config() {
#if defined(PRUNEKIT_HAVE_AVX2)
  CpuKernelConfig c = avx2_config();
#else
  CpuKernelConfig c = scalar_config();
#endif
  c.isa = Isa::kAvx512;
  c.obs_block_update = &obs_block_update_avx512;
  c.bitmap_gemv = &bitmap_gemv_avx512;
  c.bitmap_spmm = &bitmap_spmm_avx512;
  c.bitmap_spmm_lanes = 1;  // masked vectors
  c.csr16_gemv = &csr16_gemv_avx512;
  c.csr16_gemv_x = "gather";
#if defined(PRUNEKIT_HAVE_AVX2)
  // Where gathers are slow the AVX2 GEMV's scalar loads of x run on the AVX-512 CPU instead.
  if (!avx512_gathers_fast()) {
    c.csr16_gemv = &csr16_gemv_avx2;
    c.csr16_gemv_x = "loads";
  }
#endif
  // The SpMM wins from batch 4 here; elsewhere the vector-extension SpMM computes whole vectors
  // (a batch of 4 padded to 8 on AVX2, no faster than the GEMV), so the others keep batch 4.
  c.csr16_gemv_max_batch = 3;
  c.csr16_spmm = &csr16_spmm_avx512;
  c.csr16_spmm_lanes = 1;
  c.transpose_f32 = &transpose_f32_avx512;
#if defined(PRUNEKIT_HAVE_AVX512BF16)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bf16")) {
    c.bitmap_bf16_gemv = &bitmap_bf16_gemv_avx512bf16;
    c.bitmap_bf16_gemv_max_batch = 2 * kGemvMaxBatch;
  }
#endif
#if defined(PRUNEKIT_HAVE_AMX)
  if (amx_bf16_usable()) {
    c.bitmap_bf16_amx = {&bitmap_bf16_packed_x_elements_amx, &bitmap_bf16_pack_x_amx, &bitmap_bf16_spmm_amx};
    c.bitmap_bf16_gemv_max_batch = kGemvMaxBatch;  // AMX tiles past it
  }
#endif
  return c;
}
#endif

#if defined(PRUNEKIT_HAVE_NEON)
CpuKernelConfig neon_config() {
  CpuKernelConfig c = scalar_config();  // CSR16 and the transpose run their portable builds
  c.isa = Isa::kNeon;
  c.obs_block_update = &obs_block_update_neon;
  c.bitmap_gemv = &bitmap_gemv_neon;
  c.bitmap_spmm = &bitmap_spmm_neon;
  c.bitmap_spmm_lanes = 4;
  return c;
}
#endif

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> isas{"scalar"};
#if defined(PRUNEKIT_HAVE_AVX2)
  isas.push_back("avx2");
#endif
#if defined(PRUNEKIT_HAVE_AVX512)
  isas.push_back("avx512");
#endif
#if defined(PRUNEKIT_HAVE_NEON)
  isas.push_back("neon");
#endif
  return isas;
}

const CpuKernelConfig& cpu_kernel_config(Isa isa) {
  switch (isa) {
#if defined(PRUNEKIT_HAVE_AVX2)
    case Isa::kAvx2: {
      static const CpuKernelConfig config = avx2_config();
      return config;
    }
#endif
#if defined(PRUNEKIT_HAVE_AVX512)
    case Isa::kAvx512: {
      static const CpuKernelConfig config = avx512_config();
      return config;
    }
#endif
#if defined(PRUNEKIT_HAVE_NEON)
    case Isa::kNeon: {
      static const CpuKernelConfig config = neon_config();
      return config;
    }
#endif
    default: {
      static const CpuKernelConfig config = scalar_config();
      return config;
    }
  }
}

const CpuKernelConfig& cpu_kernel_config() { return cpu_kernel_config(selected_isa_id()); }

}  // namespace prunekit::cpu
