// Exact-count selection of the entries to prune: the k smallest scores, ties by lower index.
#include <algorithm>
#include <vector>

#include "prunekit/kernels_cpu.h"
#include "prunekit/radix_select.h"

namespace prunekit::cpu {

void prune_mask_smallest_scalar(const float* scores, int64_t count, int64_t k, bool* keep) {
  if (k <= 0) {
    std::fill(keep, keep + count, true);
    return;
  }
  if (k >= count) {
    std::fill(keep, keep + count, false);
    return;
  }
  std::vector<OrderedKey<float>> keys(count);
  const float threshold = nth_largest(scores, count, count - k + 1, keys);  // the k-th smallest
  int64_t below = 0;
  for (int64_t i = 0; i < count; ++i) below += scores[i] < threshold;
  int64_t ties_to_prune = k - below;
  for (int64_t i = 0; i < count; ++i) {
    const bool prune = scores[i] < threshold || (scores[i] == threshold && ties_to_prune-- > 0);
    keep[i] = !prune;
  }
}

}  // namespace prunekit::cpu
