// CSR16 GEMV and SpMM, portable build (the kernels: csr16_gemv_impl.h, spmm_generic_impl.h with
// 16-byte vectors, which GCC lowers to scalar code where the target has none).
#define PRUNEKIT_VECTOR_BYTES 16
#include "csr16_gemv_impl.h"
#include "spmm_generic_impl.h"

namespace prunekit::cpu {

Status csr16_gemv_scalar(const Csr16WeightView& w, const GemvArgs& a, RowRange range) {
  return csr16_gemv_impl(w, a, range);
}

Status csr16_spmm_scalar(const Csr16WeightView& w, const SpmmArgs& a, RowRange range) {
  return csr16_spmm_impl(w, a, range);
}

}  // namespace prunekit::cpu
