// Torch-free tests of the N:M keep-mask kernel: the n largest of each group kept (ties: lower
// index), the output poisoned first, a NaN score reported with its column; groups wider than the
// rank count (radix selection) against a stable sort, with ties, both signs, both zeros,
// subnormals and the largest finite values.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "harness.h"
#include "prunekit/kernels_cpu.h"

namespace {

using namespace prunekit::test;
using prunekit::cpu::StatusCode;

void nm_mask_cases() {
  const float scores[8] = {1, 4, 3, 2, 5, 5, 5, 5};
  bool keep[8];
  std::memset(keep, 0x55, sizeof(keep));
  auto status = prunekit::cpu::nm_mask_select_scalar(scores, prunekit::ScoreType::kFloat32, keep, 8, 2, 4, {0, 1});
  EXPECT(status.ok());
  const bool expected[8] = {false, true, true, false, true, true, false, false};
  for (int i = 0; i < 8; ++i) EXPECT(keep[i] == expected[i]);
  const float bad[4] = {1, NAN, 3, 2};
  status = prunekit::cpu::nm_mask_select_scalar(bad, prunekit::ScoreType::kFloat32, keep, 4, 2, 4, {0, 1});
  EXPECT(status.code == StatusCode::kNonFinite && status.col == 1);
}

// Keep-mask of the n largest of each group of m by a stable descending sort (ties: lower index).
template <typename T>
std::vector<bool> sorted_keep(const std::vector<T>& scores, int64_t n, int64_t m) {
  std::vector<bool> keep(scores.size(), false);
  for (size_t start = 0; start < scores.size(); start += m) {
    std::vector<int64_t> order(m);
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return scores[start + a] > scores[start + b]; });
    for (int64_t i = 0; i < n; ++i) keep[start + order[i]] = true;
  }
  return keep;
}

template <typename T>
void wide_groups_match_a_stable_sort(prunekit::ScoreType type) {
  std::mt19937 random(7);
  for (int64_t m : {17, 40, 1000}) {
    for (int levels : {2, 5, 1 << 20}) {
      const int64_t rows = 3;
      std::vector<T> scores(rows * m);
      std::uniform_int_distribution<int> level(-levels, levels);
      for (auto& score : scores) {
        const int value = level(random);
        score = value == 0 && (random() & 1) ? T(-0.0) : T(value) * T(0.37);
      }
      if (levels == 2) {  // the extremes of the key order, next to each other and to both zeros
        const T extremes[] = {std::numeric_limits<T>::max(),
                              -std::numeric_limits<T>::max(),
                              std::numeric_limits<T>::denorm_min(),
                              -std::numeric_limits<T>::denorm_min(),
                              std::numeric_limits<T>::min(),
                              -std::numeric_limits<T>::min(),
                              T(0.0),
                              T(-0.0)};
        for (auto& score : scores) {
          if (random() & 1) score = extremes[random() % 8];
        }
      }
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{2}, m / 3, m / 2, m - 1, m}) {
        std::vector<unsigned char> keep(scores.size(), 0x55);
        const auto status = prunekit::cpu::nm_mask_select_scalar(
            scores.data(), type, reinterpret_cast<bool*>(keep.data()), m, n, m, {0, rows});
        EXPECT(status.ok());
        const std::vector<bool> expected = sorted_keep(scores, n, m);
        for (size_t i = 0; i < scores.size(); ++i) EXPECT(keep[i] == (expected[i] ? 1 : 0));
      }
    }
  }
}

}  // namespace

int main() {
  nm_mask_cases();
  wide_groups_match_a_stable_sort<float>(prunekit::ScoreType::kFloat32);
  wide_groups_match_a_stable_sort<double>(prunekit::ScoreType::kFloat64);
  return finish();
}
