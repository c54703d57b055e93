// fp32 transpose, scalar build (the kernel: transpose_impl.h).
#include "transpose_impl.h"

namespace prunekit::cpu {

void transpose_f32_scalar(const float* src, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst, RowRange range) {
  transpose_rows(src, cols, ld_src, dst, ld_dst, range.begin, range.end);
}

}  // namespace prunekit::cpu
