// Torch-free tests of SparseGPT's in-block OBS kernel: every kernel of the tables of the ISAs this
// CPU runs, against a naive column-by-column loop, for unstructured (given mask) and N:M (chosen in the
// kernel) patterns, odd row counts and block widths; the block's exact-count prune mask (radix
// selection) against a stable sort, with ties, both zeros and extreme values.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "harness.h"
#include "prunekit/kernels_cpu.h"

namespace {

using namespace prunekit::cpu;
using namespace prunekit::test;

// The column loop as SparseGPT's reference writes it, in double precision.
void naive(std::vector<double>& w, const std::vector<double>& h, int64_t rows, int64_t cols, std::vector<char>& keep,
           int64_t n, int64_t m) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < cols; ++i) {
      if (m > 0 && i % m == 0) {
        for (int64_t j = 0; j < m; ++j) {
          const double sj = std::pow(w[r * cols + i + j] / h[(i + j) * cols + i + j], 2);
          int64_t rank = 0;
          for (int64_t t = 0; t < m; ++t) {
            const double st = std::pow(w[r * cols + i + t] / h[(i + t) * cols + i + t], 2);
            rank += st > sj || (st == sj && t < j);
          }
          keep[r * cols + i + j] = rank < n;
        }
      }
      const double wi = w[r * cols + i], q = keep[r * cols + i] ? wi : 0.0;
      const double e = (wi - q) / h[i * cols + i];
      for (int64_t j = i; j < cols; ++j) w[r * cols + j] -= e * h[i * cols + j];
      w[r * cols + i] = q;
    }
  }
}

void check(const char* name, ObsBlockUpdateFn fn, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  for (int64_t cols : {8, 24, 40}) {
    for (int64_t rows : {1, 3, 17}) {
      for (int64_t m : {0, 4, 8}) {
        const int64_t n = m / 2;
        std::vector<float> h(cols * cols, 0.0f), w(rows * cols), err(rows * cols);
        for (int64_t i = 0; i < cols; ++i)
          for (int64_t j = i; j < cols; ++j)
            h[i * cols + j] = i == j ? 1.0f + 0.1f * float(i % 3) : 0.05f * normal(rng);
        for (auto& v : w) v = normal(rng);
        std::vector<char> keep_naive(rows * cols, 1);
        for (int64_t i = 0; i < rows * cols; ++i) keep_naive[i] = m > 0 ? 1 : (rng() % 2);
        std::vector<double> wd(w.begin(), w.end()), hd(h.begin(), h.end());
        std::unique_ptr<bool[]> keep(new bool[rows * cols]);
        for (int64_t i = 0; i < rows * cols; ++i) keep[i] = keep_naive[i];
        naive(wd, hd, rows, cols, keep_naive, n, m);
        fn({w.data(), cols, h.data(), cols, cols, err.data(), keep.get(), n, m}, {0, rows});
        for (int64_t i = 0; i < rows * cols; ++i) {
          EXPECT(keep[i] == bool(keep_naive[i]));
          EXPECT(std::fabs(w[i] - wd[i]) <= 1e-4 * (1 + std::fabs(wd[i])));
          if (!keep[i]) EXPECT(w[i] == 0.0f);
        }
      }
    }
  }
  std::printf("obs_block (%s) checked\n", name);
}

// keep[i] false for the k smallest scores by a stable ascending sort (ties: lower index pruned).
void prune_mask_matches_a_stable_sort(std::mt19937& rng) {
  for (int64_t count : {1, 2, 17, 300, 5000}) {
    for (int levels : {1, 3, 1 << 20}) {
      std::vector<float> scores(count);
      std::uniform_int_distribution<int> level(0, levels);
      for (auto& score : scores) {
        const int value = level(rng);
        score = value == 0 && (rng() & 1) ? -0.0f : float(value) * 0.37f;
      }
      if (levels == 1) {  // the extremes of the key order among ties and both zeros
        const float extremes[] = {std::numeric_limits<float>::max(),
                                  std::numeric_limits<float>::denorm_min(),
                                  std::numeric_limits<float>::min(),
                                  std::numeric_limits<float>::infinity(),
                                  0.0f,
                                  -0.0f};
        for (auto& score : scores) {
          if (rng() & 1) score = extremes[rng() % 6];
        }
      }
      std::vector<int64_t> order(count);
      std::iota(order.begin(), order.end(), int64_t{0});
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
      for (int64_t k : {int64_t{-1}, int64_t{0}, int64_t{1}, count / 3, count / 2, count - 1, count, count + 1}) {
        std::vector<unsigned char> keep(count, 0x55);
        prune_mask_smallest_scalar(scores.data(), count, k, reinterpret_cast<bool*>(keep.data()));
        std::vector<unsigned char> expected(count, 1);
        for (int64_t i = 0; i < std::clamp<int64_t>(k, 0, count); ++i) expected[order[i]] = 0;
        EXPECT(keep == expected);
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  prune_mask_matches_a_stable_sort(rng);
  for (const auto* table : tables_with_own(&CpuKernelConfig::obs_block_update)) {
    check(isa_name(table->isa), table->obs_block_update, rng);
  }
  return finish();
}
