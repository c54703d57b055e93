// N:M keep-mask, scalar kernel: rank each entry within its group (ties: lower index first).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

// Groups up to this size are ranked by counting (m^2 compares, no scratch); larger ones sort.
constexpr int64_t kMaxCountingGroup = 16;

template <typename Load>
Status mask_rows(Load load, bool* keep, int64_t k, int64_t n, int64_t m, int64_t row_begin,
                 int64_t row_end) {
  std::vector<double> group(m);
  std::vector<int64_t> order(m > kMaxCountingGroup ? m : 0);
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t start = 0; start < k; start += m) {
      const int64_t base = row * k + start;
      for (int64_t i = 0; i < m; ++i) {
        group[i] = load(base + i);
        if (!std::isfinite(group[i])) return Status{StatusCode::kNonFinite, row, start + i};
      }
      bool* out = keep + base;
      if (m <= kMaxCountingGroup) {
        for (int64_t i = 0; i < m; ++i) {
          int64_t rank = 0;
          for (int64_t j = 0; j < m; ++j) {
            rank += group[j] > group[i] || (group[j] == group[i] && j < i);
          }
          out[i] = rank < n;
        }
      } else {
        std::iota(order.begin(), order.end(), int64_t{0});
        auto before = [&](int64_t a, int64_t b) {
          return group[a] > group[b] || (group[a] == group[b] && a < b);
        };
        if (n > 0 && n < m) std::nth_element(order.begin(), order.begin() + n, order.end(), before);
        for (int64_t i = 0; i < m; ++i) out[i] = false;
        for (int64_t i = 0; i < n; ++i) out[order[i]] = true;
      }
    }
  }
  return Status{};
}

}  // namespace

Status nm_mask_rows_scalar(const void* scores, ScoreType type, bool* keep, int64_t k, int64_t n,
                           int64_t m, int64_t row_begin, int64_t row_end) {
  switch (type) {
    case ScoreType::kFloat32: {
      const float* p = static_cast<const float*>(scores);
      return mask_rows([p](int64_t i) { return double(p[i]); }, keep, k, n, m, row_begin, row_end);
    }
    case ScoreType::kFloat64: {
      const double* p = static_cast<const double*>(scores);
      return mask_rows([p](int64_t i) { return p[i]; }, keep, k, n, m, row_begin, row_end);
    }
    case ScoreType::kFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(scores);
      return mask_rows([p](int64_t i) { return double(fp16_to_float(p[i])); }, keep, k, n, m,
                       row_begin, row_end);
    }
    case ScoreType::kBFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(scores);
      return mask_rows([p](int64_t i) { return double(bf16_to_float(p[i])); }, keep, k, n, m,
                       row_begin, row_end);
    }
  }
  return Status{};
}

}  // namespace prunekit::cpu
