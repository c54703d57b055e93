// CSR16 GEMV, AVX-512 build (the kernel: csr16_gemv_impl.h).
#include "csr16_gemv_impl.h"

namespace prunekit::cpu {

Status csr16_gemv_avx512(const void* values, ValueType type, const uint16_t* col_indices, const int64_t* row_offsets,
                         int64_t rows, int64_t k, const float* x, int64_t batch, const float* bias, float* y,
                         int64_t row_begin, int64_t row_end) {
  return csr16_gemv(values, type, col_indices, row_offsets, rows, k, x, batch, bias, y, row_begin, row_end);
}

}  // namespace prunekit::cpu
