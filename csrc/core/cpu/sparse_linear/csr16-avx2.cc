// CSR16 GEMV and SpMM, AVX2 + FMA build (the kernels: csr16_gemv_impl.h, spmm_generic_impl.h).
#define PRUNEKIT_VECTOR_BYTES 32
#include "csr16_gemv_impl.h"
#include "spmm_generic_impl.h"

namespace prunekit::cpu {

Status csr16_gemv_avx2(const Csr16WeightView& w, const GemvArgs& a, RowRange range) {
  return csr16_gemv_impl(w, a, range);
}

Status csr16_spmm_avx2(const Csr16WeightView& w, const SpmmArgs& a, RowRange range) {
  return csr16_spmm_impl(w, a, range);
}

}  // namespace prunekit::cpu
