// SparseGPT in-block OBS updates, avx512 variant (see obs_block_impl.h; flags from CMake).
#define PRUNEKIT_VECTOR_BYTES 64
#include "obs_block_impl.h"

namespace prunekit::cpu {

void obs_block_update_avx512(const ObsBlockArgs& a, RowRange range) {
  obs_block_update_impl(a.w, a.ldw, a.hinv, a.ldh, a.cols, a.err, a.keep, a.n, a.m, range.begin, range.end);
}

}  // namespace prunekit::cpu
