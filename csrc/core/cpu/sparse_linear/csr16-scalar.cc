// CSR16 GEMV and SpMM, portable build (the kernels: csr16_gemv_impl.h, spmm_generic_impl.h with
// 16-byte vectors, which GCC lowers to scalar code where the target has none).
#define PRUNEKIT_VECTOR_BYTES 16
#include "spmm_generic_impl.h"
#include "csr16_gemv_impl.h"

namespace prunekit::cpu {

Status csr16_gemv_scalar(const void* values, ValueType type, const uint16_t* col_indices, const int64_t* row_offsets,
                         int64_t rows, int64_t k, const float* x, int64_t batch, const float* bias, float* y,
                         int64_t row_begin, int64_t row_end) {
  return csr16_gemv_impl(values, type, col_indices, row_offsets, rows, k, x, batch, bias, y, row_begin, row_end);
}

Status csr16_spmm_scalar(const void* values, ValueType type, const uint16_t* col_indices, const int64_t* row_offsets,
                         int64_t k, const float* x, int64_t ldx, int64_t cols_x, const float* bias, float* y,
                         int64_t ldy, int64_t row_begin, int64_t row_end) {
  return csr16_spmm_impl(values, type, col_indices, row_offsets, k, x, ldx, cols_x, bias, y, ldy, row_begin, row_end);
}

}  // namespace prunekit::cpu
