// fp32 transpose, avx2 build (the kernel: transpose_impl.h).
#include "transpose_impl.h"

namespace prunekit::cpu {

void transpose_f32_avx2(const float* src, int64_t rows, int64_t cols, float* dst, int64_t row_begin,
                        int64_t row_end) {
  transpose_rows(src, rows, cols, dst, row_begin, row_end);
}

}  // namespace prunekit::cpu
