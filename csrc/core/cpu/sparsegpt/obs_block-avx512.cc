// SparseGPT in-block OBS updates, avx512 variant (see obs_block_impl.h; flags from CMake).
#define PRUNEKIT_VECTOR_BYTES 64
#include "obs_block_impl.h"

namespace prunekit::cpu {

void obs_block_update_avx512(float* w, int64_t ldw, const float* hinv, int64_t ldh, int64_t cols,
                         float* err, bool* keep, int64_t n, int64_t m, int64_t row_begin,
                         int64_t row_end) {
  obs_block_update_impl(w, ldw, hinv, ldh, cols, err, keep, n, m, row_begin, row_end);
}

}  // namespace prunekit::cpu
