// N:M keep-mask, scalar kernel: rank each entry within its group (ties: lower index first).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"
#include "prunekit/radix_select.h"

namespace prunekit::cpu {
namespace {

// Groups up to this size are ranked by counting (m^2 compares, no scratch); larger ones select.
constexpr int64_t kMaxCountingGroup = 16;

// Rank counting with m known at compile time (2, 4, 8, 16: the common patterns): the pair loops
// unroll and the group stays in registers.
template <int M, typename Compute, typename Load>
Status mask_rows_fixed(Load load, bool* keep, int64_t k, int64_t n, int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t start = 0; start < k; start += M) {
      const int64_t base = row * k + start;
      Compute group[M];
      bool finite = true;
      for (int i = 0; i < M; ++i) {
        group[i] = load(base + i);
        finite &= std::isfinite(group[i]);
      }
      if (!finite) {
        for (int i = 0; i < M; ++i) {
          if (!std::isfinite(group[i])) return Status{StatusCode::kNonFinite, row, start + i};
        }
      }
      int rank[M] = {};
      for (int i = 0; i < M; ++i) {
        for (int j = i + 1; j < M; ++j) {
          const bool j_wins = group[j] > group[i];
          rank[i] += j_wins;
          rank[j] += !j_wins;
        }
      }
      for (int i = 0; i < M; ++i) keep[base + i] = rank[i] < n;
    }
  }
  return Status{};
}

// Scores are compared as Compute (float for fp32/fp16/bf16, whose conversion to float is exact;
// double for fp64).
template <typename Compute, typename Load>
Status mask_rows(Load load, bool* keep, int64_t k, int64_t n, int64_t m, int64_t row_begin, int64_t row_end) {
  switch (m) {
    case 2: return mask_rows_fixed<2, Compute>(load, keep, k, n, row_begin, row_end);
    case 4: return mask_rows_fixed<4, Compute>(load, keep, k, n, row_begin, row_end);
    case 8: return mask_rows_fixed<8, Compute>(load, keep, k, n, row_begin, row_end);
    case 16: return mask_rows_fixed<16, Compute>(load, keep, k, n, row_begin, row_end);
    default: break;
  }
  std::vector<Compute> group(m);
  std::vector<int64_t> rank(m <= kMaxCountingGroup ? m : 0);
  std::vector<OrderedKey<Compute>> keys(m > kMaxCountingGroup ? m : 0);
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t start = 0; start < k; start += m) {
      const int64_t base = row * k + start;
      for (int64_t i = 0; i < m; ++i) {
        group[i] = load(base + i);
        if (!std::isfinite(group[i])) return Status{StatusCode::kNonFinite, row, start + i};
      }
      bool* out = keep + base;
      if (m <= kMaxCountingGroup) {
        // Each pair is compared once; the loser's rank grows (a tie goes to the lower index).
        std::fill(rank.begin(), rank.end(), 0);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = i + 1; j < m; ++j) {
            const bool j_wins = group[j] > group[i];
            rank[i] += j_wins;
            rank[j] += !j_wins;
          }
        }
        for (int64_t i = 0; i < m; ++i) out[i] = rank[i] < n;
      } else if (n <= 0 || n >= m) {
        std::fill(out, out + m, n > 0);
      } else {
        const Compute threshold = nth_largest(group.data(), m, n, keys);
        // Every score above the threshold is kept, then the first ties by index until n are kept.
        int64_t ties = n;
        for (int64_t i = 0; i < m; ++i) {
          out[i] = group[i] > threshold;
          ties -= out[i];
        }
        for (int64_t i = 0; ties > 0; ++i) {
          if (group[i] == threshold) {
            out[i] = true;
            --ties;
          }
        }
      }
    }
  }
  return Status{};
}

}  // namespace

Status nm_mask_select_scalar(const void* scores, ScoreType type, bool* keep, int64_t k, int64_t n, int64_t m,
                             RowRange range) {
  const int64_t row_begin = range.begin, row_end = range.end;
  switch (type) {
    case ScoreType::kFloat32: {
      const float* p = static_cast<const float*>(scores);
      return mask_rows<float>([p](int64_t i) { return p[i]; }, keep, k, n, m, row_begin, row_end);
    }
    case ScoreType::kFloat64: {
      const double* p = static_cast<const double*>(scores);
      return mask_rows<double>([p](int64_t i) { return p[i]; }, keep, k, n, m, row_begin, row_end);
    }
    case ScoreType::kFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(scores);
      return mask_rows<float>([p](int64_t i) { return fp16_to_float(p[i]); }, keep, k, n, m, row_begin, row_end);
    }
    case ScoreType::kBFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(scores);
      return mask_rows<float>([p](int64_t i) { return bf16_to_float(p[i]); }, keep, k, n, m, row_begin, row_end);
    }
  }
  return Status{};
}

}  // namespace prunekit::cpu
