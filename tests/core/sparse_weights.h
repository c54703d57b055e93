// Sparse test weights for the bitmap and CSR16 kernel tests: random (rows, k) matrices in the
// bitmap format with their dense copy, values allocated exactly (ASan catches any overread), and
// the few hand-made corrupt ones the kernels must report without reading past the values.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "harness.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::test {

using namespace prunekit::cpu;

struct Sparse {
  std::unique_ptr<float[]> values;  // exactly nnz entries: ASan catches any overread
  std::vector<uint16_t> bitmap;
  std::vector<int64_t> offsets;
  std::vector<float> dense;
};

Sparse make(int64_t rows, int64_t k, double sparsity, std::mt19937& rng) {
  Sparse s;
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::bernoulli_distribution zero(sparsity);
  s.dense.resize(rows * k);
  for (auto& v : s.dense) v = zero(rng) ? 0.0f : uniform(rng);
  s.bitmap.resize(rows * bitmap_words(k));
  s.offsets.assign(rows + 1, 0);
  std::vector<int64_t> nnz(rows);
  bitmap_scan_scalar(s.dense.data(), 4, true, k, s.bitmap.data(), nnz.data(), {0, rows});
  for (int64_t r = 0; r < rows; ++r) s.offsets[r + 1] = s.offsets[r] + nnz[r];
  s.values = exact_buffer<float>(s.offsets[rows]);
  bitmap_pack_scalar(s.dense.data(), 4, k, s.bitmap.data(), s.offsets.data(), s.values.get(), {0, rows});
  return s;
}

// A (rows, k) matrix with exactly k / 2 nonzeros per row: two per group of four (2:4) in most
// rows, but row 1 has groups of three and one, and row 2 (when k >= 16) a dense last group of four.
Sparse make_half_dense(int64_t rows, int64_t k, std::mt19937& rng) {
  Sparse s;
  std::uniform_real_distribution<float> uniform(0.5f, 1.0f);
  s.dense.assign(rows * k, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < k / 4; ++g) {
      const int64_t first = rng() % 4, second = (first + 1 + rng() % 3) % 4;
      s.dense[r * k + 4 * g + first] = uniform(rng);
      s.dense[r * k + 4 * g + second] = -uniform(rng);
    }
  }
  if (rows > 1 && k >= 8) {
    for (int64_t c = 0; c < 8; ++c) s.dense[k + c] = c < 3 || c == 4 ? 1.0f + float(c) : 0.0f;
  }
  if (rows > 2 && k >= 16) {
    for (int64_t c = k - 8; c < k; ++c) s.dense[2 * k + c] = c < k - 4 ? 2.0f : 0.0f;
  }
  s.bitmap.resize(rows * bitmap_words(k));
  s.offsets.assign(rows + 1, 0);
  std::vector<int64_t> nnz(rows);
  bitmap_scan_scalar(s.dense.data(), 4, true, k, s.bitmap.data(), nnz.data(), {0, rows});
  for (int64_t r = 0; r < rows; ++r) s.offsets[r + 1] = s.offsets[r] + nnz[r];
  s.values = exact_buffer<float>(s.offsets[rows]);
  bitmap_pack_scalar(s.dense.data(), 4, k, s.bitmap.data(), s.offsets.data(), s.values.get(), {0, rows});
  return s;
}

// x (batch, k) times the dense matrix, plus bias.
float expected_dot(const Sparse& s, const std::vector<float>& x, const std::vector<float>& bias, int64_t k, int64_t b,
                   int64_t r) {
  float sum = bias.empty() ? 0.0f : bias[r];
  for (int64_t c = 0; c < k; ++c) sum += s.dense[r * k + c] * x[b * k + c];
  return sum;
}

// A (4, 128) bitmap weight whose row 2 is corrupt up to the very end of the values: rows 0 and 3
// hold 64 values each, rows 1 and 2 none, but row 2's bitmap marks 63 columns and then one more.
// Walked in a pair with row 0, its reads must stop at the values' end (allocate them exactly).
struct CorruptToTheEnd {
  static constexpr int64_t kRows = 4, kColumns = 128;
  std::vector<uint16_t> bitmap;
  std::vector<int64_t> offsets{0, 64, 64, 64, 128};
  CorruptToTheEnd() : bitmap(kRows * bitmap_words(kColumns), 0) {
    const int64_t words = bitmap_words(kColumns);
    for (int64_t w = 0; w < words; ++w) bitmap[w] = bitmap[3 * words + w] = 0x5555;
    const uint16_t corrupt[8] = {0xffff, 0xffff, 0xffff, 0x7fff, 0x0001, 0, 0, 0};
    std::memcpy(&bitmap[2 * words], corrupt, sizeof(corrupt));
  }
};

std::unique_ptr<uint16_t[]> csr16_columns(const Sparse& s, int64_t rows, int64_t k) {
  std::unique_ptr<uint16_t[]> columns(new uint16_t[s.offsets[rows] > 0 ? s.offsets[rows] : 1]);
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < k; ++c)
      if (s.dense[r * k + c] != 0.0f) columns[n++] = uint16_t(c);
  EXPECT(n == s.offsets[rows]);
  return columns;
}

// ---- bf16 ----
// A random sparse weight for the bf16 kernels: values rounded to bf16 (the dense copy too, for the
// fp32 reference) and allocated exactly, and a small integer bias.
struct Bf16Weight {
  Sparse s;
  std::unique_ptr<uint16_t[]> values;
  std::vector<float> bias;
};

Bf16Weight make_bf16(int64_t rows, int64_t k, double sparsity, std::mt19937& rng) {
  Bf16Weight w{make(rows, k, sparsity, rng), nullptr, std::vector<float>(rows)};
  const int64_t nnz = w.s.offsets[rows];
  w.values = exact_buffer<uint16_t>(nnz);
  for (int64_t i = 0; i < nnz; ++i) w.values[i] = to_bf16(w.s.values[i]);
  for (auto& d : w.s.dense) d = from_bf16(to_bf16(d));
  for (auto& b : w.bias) b = float(rng() % 7) - 3.0f;
  return w;
}

// Small integers as fp32 x and its bf16 copy (exact).
void fill_x_bf16(std::mt19937& rng, std::vector<float>& x, uint16_t* x16) {
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = float(rng() % 11) - 5.0f;
    x16[i] = to_bf16(x[i]);
  }
}

// y (batch, rows) against bias + W x in fp32 on the same bf16 numbers (products exact, only the
// order of the sums differs).
void expect_bf16_result(const Bf16Weight& w, int64_t rows, int64_t k, int64_t batch, const std::vector<float>& x,
                        const float* y) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      float expected = w.bias[r];
      for (int64_t c = 0; c < k; ++c) expected += w.s.dense[r * k + c] * x[b * k + c];
      EXPECT(close(y[b * rows + r], expected));
    }
}
}  // namespace prunekit::test
