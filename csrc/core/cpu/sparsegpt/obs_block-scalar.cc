// SparseGPT in-block OBS updates, scalar variant (see obs_block_impl.h; flags from CMake).
#define PRUNEKIT_VECTOR_BYTES 16
#include "obs_block_impl.h"

namespace prunekit::cpu {

void obs_block_update_scalar(const ObsBlockArgs& a, RowRange range) {
  obs_block_update_impl(a.w, a.ldw, a.hinv, a.ldh, a.cols, a.err, a.keep, a.n, a.m, range.begin, range.end);
}

}  // namespace prunekit::cpu
