// Torch-free tests of the bitmap and CSR16 sparse kernels, every compiled ISA variant the CPU runs:
// outputs poisoned with NaN first (every entry must be written), remainder words / tiles /
// batches, sparsity 0, 0.5, 0.9 and 1, corrupt offsets reported without reading out of bounds
// (run under AddressSanitizer: values are allocated exactly, with no slack).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace {

using namespace prunekit::cpu;

int failures = 0;
#define EXPECT(condition)                                                             \
  do {                                                                                \
    if (!(condition)) {                                                               \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #condition);   \
      ++failures;                                                                     \
    }                                                                                 \
  } while (0)

struct Variant {
  const char* name;
  decltype(&bitmap_gemv_scalar) gemv;
  decltype(&bitmap_spmm_scalar) spmm;
};

std::vector<Variant> variants() {
  std::vector<Variant> out{{"scalar", &bitmap_gemv_scalar, &bitmap_spmm_scalar}};
#if defined(PRUNEKIT_HAVE_AVX512) && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vbmi2")) {
    out.push_back({"avx512", &bitmap_gemv_avx512, &bitmap_spmm_avx512});
  }
#endif
#if defined(PRUNEKIT_HAVE_AVX2) && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    out.push_back({"avx2", &bitmap_gemv_avx2, &bitmap_spmm_avx2});
  }
#endif
#if defined(PRUNEKIT_HAVE_NEON)
  out.push_back({"neon", &bitmap_gemv_neon, &bitmap_spmm_neon});
#endif
  return out;
}

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
  s.values.reset(new float[s.offsets[rows] > 0 ? s.offsets[rows] : 1]);
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
  s.values.reset(new float[s.offsets[rows]]);
  bitmap_pack_scalar(s.dense.data(), 4, k, s.bitmap.data(), s.offsets.data(), s.values.get(), {0, rows});
  return s;
}

// x (batch, k) times the dense matrix, plus bias.
float expected_dot(const Sparse& s, const std::vector<float>& x, const std::vector<float>& bias, int64_t k,
                   int64_t b, int64_t r) {
  float sum = bias.empty() ? 0.0f : bias[r];
  for (int64_t c = 0; c < k; ++c) sum += s.dense[r * k + c] * x[b * k + c];
  return sum;
}

uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return uint16_t(bits >> 16);  // truncation: any bf16 number will do
}

float from_bf16(uint16_t half) {
  const uint32_t bits = uint32_t(half) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
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

bool close(float a, float b) { return std::fabs(a - b) <= 1e-4f * (1.0f + std::fabs(b)); }

void check_variant(const Variant& v, std::mt19937& rng) {
  for (int64_t k : {1, 15, 16, 17, 100, 256}) {
    for (int64_t rows : {1, 5, 33}) {
      for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
        Sparse s = make(rows, k, sparsity, rng);
        std::vector<float> bias(rows);
        for (auto& b : bias) b = float(rng() % 7) - 3.0f;
        for (int64_t batch : {1, 2, 3, 4}) {
          std::vector<float> x(batch * k), y(batch * rows, NAN);
          for (auto& e : x) e = float(rng() % 11) - 5.0f;
          EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), rows, k}, {x.data(), batch, bias.data(), y.data()}, {0, rows}).ok());
          for (int64_t b = 0; b < batch; ++b)
            for (int64_t r = 0; r < rows; ++r) {
              float expected = bias[r];
              for (int64_t c = 0; c < k; ++c) expected += s.dense[r * k + c] * x[b * k + c];
              EXPECT(close(y[b * rows + r], expected));
            }
        }
        // Row strides equal to the width, and past it (as the linear ops' line-aligned x^T and
        // y^T): the padding of x is NaN and must not be read, that of y must stay untouched.
        for (int64_t cols_x : {1, 7, 16, 49, 64, 70, 131})
          for (int64_t pad : {0, 5}) {
            const int64_t ld = cols_x + pad;
            std::vector<float> x(k * ld, NAN), y(rows * ld, NAN);
            for (int64_t c = 0; c < k; ++c)
              for (int64_t p = 0; p < cols_x; ++p) x[c * ld + p] = float(rng() % 11) - 5.0f;
            EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), rows, k}, {x.data(), ld, cols_x, bias.data(), Activation::kRelu6, y.data(), ld}, {0, rows}).ok());
            for (int64_t r = 0; r < rows; ++r) {
              for (int64_t p = 0; p < cols_x; ++p) {
                float expected = bias[r];
                for (int64_t c = 0; c < k; ++c) expected += s.dense[r * k + c] * x[c * ld + p];
                expected = expected < 0 ? 0 : expected > 6 ? 6 : expected;
                EXPECT(close(y[r * ld + p], expected));
              }
              for (int64_t p = cols_x; p < ld; ++p) EXPECT(std::isnan(y[r * ld + p]));
            }
          }
      }
    }
  }
  {
    // Enough rows and columns for several row blocks, k-blocks and column tiles of the
    // cache-blocked kernels, computed as two row ranges (as two threads would).
    const int64_t rows = 2100, k = 200, cols_x = 150;
    Sparse s = make(rows, k, 0.7, rng);
    std::vector<float> x(k * cols_x), y(rows * cols_x, NAN);
    for (auto& e : x) e = float(rng() % 11) - 5.0f;
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 1003}, {1003, rows}}) {
      EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), rows, k}, {x.data(), cols_x, cols_x, nullptr, Activation::kNone, y.data(), cols_x}, {begin, end}).ok());
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t p = 0; p < cols_x; ++p) {
        float expected = 0.0f;
        for (int64_t c = 0; c < k; ++c) expected += s.dense[r * k + c] * x[c * cols_x + p];
        EXPECT(close(y[r * cols_x + p], expected));
      }
  }
  // Half-dense rows, 2:4 or not (AVX2 takes a fixed-offset path for 2:4 rows), values exact-size.
  for (int64_t k : {8, 16, 48, 256}) {
    Sparse s = make_half_dense(5, k, rng);
    std::vector<float> bias(5, 0.5f);
    for (int64_t batch : {1, 2, 3, 4}) {
      std::vector<float> x(batch * k), y(batch * 5, NAN);
      for (auto& e : x) e = float(rng() % 11) - 5.0f;
      EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), 5, k}, {x.data(), batch, bias.data(), y.data()}, {0, 5}).ok());
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < 5; ++r) EXPECT(close(y[b * 5 + r], expected_dot(s, x, bias, k, b, r)));
    }
  }
  // A mark past k (offsets counting it, so only the mark itself is wrong) is reported by every
  // kernel path: GEMV, the SpMM of narrow X (expanded dense-ish rows on AVX-512) and of wide X.
  // Also an offset one short (the row's marks need one value more than its span), each in a row
  // of a full 16-row block (rows 16-31) and in a lone row.
  for (int64_t rows : {int64_t(3), int64_t(33)}) {
    const int64_t k = 20, bad = rows > 16 ? 20 : 1;
    const int64_t words = bitmap_words(k);
    for (bool mark_past_k : {true, false}) {
      Sparse s = make(rows, k, 0.0, rng);
      std::vector<int64_t> offsets = s.offsets;
      if (mark_past_k) {
        s.bitmap[bad * words + words - 1] |= uint16_t(1u << (k % kBitmapWordBits));  // column 20
        for (int64_t r = bad + 1; r <= rows; ++r) offsets[r] += 1;
      } else {
        offsets[bad + 1] -= 1;  // row `bad` one short, the next one long
      }
      std::unique_ptr<float[]> values(new float[offsets[rows]]);
      for (int64_t i = 0; i < offsets[rows]; ++i) values[i] = 1.0f;
      std::vector<float> x(k * 40, 1.0f), y(rows * 40);
      EXPECT(v.gemv({values.get(), ValueType::kFloat32, s.bitmap.data(), offsets.data(), rows, k}, {x.data(), 1, nullptr, y.data()}, {0, rows}).row == bad);
      for (int64_t cols_x : {5, 16, 40}) {
        const Status status = v.spmm({values.get(), ValueType::kFloat32, s.bitmap.data(), offsets.data(), rows, k}, {x.data(), cols_x, cols_x, nullptr, Activation::kNone, y.data(), cols_x}, {0, rows});
        EXPECT(status.code == StatusCode::kCorruptMeta && status.row == bad);
      }
    }
  }
  // bf16 values (widened in the kernels), narrow and wide X, dense-ish and sparse rows: the
  // AVX-512 build expands dense-ish rows of narrow X whole (another path than the nonzero-wise one).
  for (double sparsity : {0.0, 0.5, 0.9}) {
    const int64_t rows = 37, k = 83;
    Sparse s = make(rows, k, sparsity, rng);
    const int64_t nnz = s.offsets[rows];
    std::unique_ptr<uint16_t[]> halves(new uint16_t[nnz > 0 ? nnz : 1]);
    for (int64_t i = 0; i < nnz; ++i) halves[i] = to_bf16(s.values[i]);
    std::vector<float> rounded(s.dense);  // the weight as the kernels see it
    for (auto& e : rounded) e = from_bf16(to_bf16(e));
    for (int64_t cols_x : {3, 16, 40}) {
      std::vector<float> x(k * cols_x), y(rows * cols_x, NAN);
      for (auto& e : x) e = float(rng() % 11) - 5.0f;
      EXPECT(v.spmm({halves.get(), ValueType::kBFloat16, s.bitmap.data(), s.offsets.data(), rows, k}, {x.data(), cols_x, cols_x, nullptr, Activation::kNone, y.data(), cols_x}, {0, rows}).ok());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t p = 0; p < cols_x; ++p) {
          float expected = 0.0f;
          for (int64_t c = 0; c < k; ++c) expected += rounded[r * k + c] * x[c * cols_x + p];
          EXPECT(close(y[r * cols_x + p], expected));
        }
    }
  }
  // A NaN sum stays NaN through the fused ReLU / ReLU6, as in F.relu (column tiles of 16 and a
  // remainder, NaN in one pixel column of x).
  for (Activation activation : {Activation::kRelu, Activation::kRelu6}) {
    Sparse s = make(5, 24, 0.0, rng);
    const int64_t cols_x = 19;
    std::vector<float> x(24 * cols_x, 1.0f), y(5 * cols_x, 0.0f);
    for (int64_t c = 0; c < 24; ++c) x[c * cols_x + 17] = c == 3 ? NAN : 1.0f;
    EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), 5, 24}, {x.data(), cols_x, cols_x, nullptr, activation, y.data(), cols_x}, {0, 5}).ok());
    for (int64_t r = 0; r < 5; ++r) {
      EXPECT(std::isnan(y[r * cols_x + 17]));
      EXPECT(!std::isnan(y[r * cols_x + 16]));
    }
  }
  // Batch 1 over the row ranges threads get (odd and even lengths, not from row 0; the AVX-512
  // GEMV walks the two halves of a range in lockstep): the range's rows right, the others untouched.
  {
    Sparse s = make(37, 100, 0.5, rng);
    std::vector<float> x(100), no_bias;
    for (auto& e : x) e = float(rng() % 11) - 5.0f;
    for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{3, 4}, {3, 10}, {5, 37}, {0, 36}, {0, 37}}) {
      std::vector<float> y(37, NAN);
      EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), 37, 100}, {x.data(), 1, nullptr, y.data()}, {begin, end}).ok());
      for (int64_t r = 0; r < 37; ++r) {
        EXPECT(r >= begin && r < end ? close(y[r], expected_dot(s, x, no_bias, 100, 0, r)) : std::isnan(y[r]));
      }
    }
    // Corrupt rows 10-11 and 20-21 (offsets 11 and 21 one short): row 20, in the second half of
    // [0, 36), is reached first in lockstep; the first corrupt row, 10, is the one named.
    std::vector<int64_t> skewed = s.offsets;
    skewed[11] -= 1;
    skewed[21] -= 1;
    std::vector<float> y(37);
    EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), skewed.data(), 37, 100}, {x.data(), 1, nullptr, y.data()}, {0, 36}).row == 10);
  }
  {
    const CorruptToTheEnd w;
    std::unique_ptr<float[]> values(new float[128]);  // exactly: ASan catches a read past the end
    for (int64_t i = 0; i < 128; ++i) values[i] = 1.0f;
    std::vector<float> x(w.kColumns, 1.0f), y(w.kRows);
    const Status status = v.gemv({values.get(), ValueType::kFloat32, w.bitmap.data(), w.offsets.data(), w.kRows, w.kColumns}, {x.data(), 1, nullptr, y.data()}, {0, w.kRows});
    EXPECT(status.code == StatusCode::kCorruptMeta && status.row == 2);
  }
  // Offsets that disagree with the bitmap are reported, never followed past the values.
  Sparse s = make(8, 40, 0.5, rng);
  std::vector<int64_t> skewed = s.offsets;
  skewed[8] += 0;
  skewed[7] -= 1;  // row 6 one short, row 7 one long
  std::vector<float> x(40 * 3, 1.0f), y(8 * 3);
  EXPECT(!v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), skewed.data(), 8, 40}, {x.data(), 1, nullptr, y.data()}, {0, 8}).ok());
  EXPECT(!v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), skewed.data(), 8, 40}, {x.data(), 3, 3, nullptr, Activation::kNone, y.data(), 3}, {0, 8}).ok());
  std::printf("bitmap kernels (%s) checked\n", v.name);
}


// The CSR16 GEMV and SpMM variants: column indices derived from the bitmap, values and indices
// allocated exactly (ASan), outputs poisoned with NaN, row lengths covering the unrolled loops'
// remainders, SpMM widths covering partial vectors and tiles, and an index past k reported before
// x is read (x is allocated exactly too).
struct Csr16Variant {
  const char* name;
  decltype(&csr16_gemv_scalar) gemv;
  decltype(&csr16_spmm_scalar) spmm;
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

// Y = W X + bias for X (k, cols_x): every entry against the dense product.
void check_csr16_spmm(const Csr16Variant& v, const Sparse& s, const uint16_t* columns, int64_t rows, int64_t k,
                      int64_t cols_x, const std::vector<float>& bias, std::mt19937& rng) {
  // Row strides past the width (as the linear ops' line-aligned x^T and y^T): the NaN gap of x
  // must not be read, that of y must stay untouched.
  const int64_t ldx = cols_x + 5, ldy = cols_x + 3;
  std::unique_ptr<float[]> x(new float[k * ldx]);
  for (int64_t i = 0; i < k * ldx; ++i) x[i] = i % ldx < cols_x ? float(rng() % 11) - 5.0f : NAN;
  std::vector<float> y(rows * ldy, NAN);
  EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, columns, s.offsets.data(), rows, k},
                {x.get(), ldx, cols_x, bias.data(), Activation::kNone, y.data(), ldy}, {0, rows}).ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t p = 0; p < cols_x; ++p) {
      double expected = bias[r], magnitude = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        expected += double(s.dense[r * k + c]) * x[c * ldx + p];
        magnitude += std::fabs(double(s.dense[r * k + c]) * x[c * ldx + p]);
      }
      EXPECT(std::fabs(y[r * ldy + p] - expected) <= 1e-4 * (1.0 + std::fabs(expected)) + 1e-6 * magnitude);
    }
    for (int64_t p = cols_x; p < ldy; ++p) EXPECT(std::isnan(y[r * ldy + p]));
  }
}

void check_csr16(std::mt19937& rng) {
  std::vector<Csr16Variant> kernels{{"scalar", &csr16_gemv_scalar, &csr16_spmm_scalar}};
#if defined(PRUNEKIT_HAVE_AVX2) && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    kernels.push_back({"avx2", &csr16_gemv_avx2, &csr16_spmm_avx2});
  }
#endif
#if defined(PRUNEKIT_HAVE_AVX512) && (defined(__x86_64__) || defined(_M_X64))
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    kernels.push_back({"avx512", &csr16_gemv_avx512, &csr16_spmm_avx512});
  }
#endif
  for (const Csr16Variant& variant : kernels) {
    const auto gemv = variant.gemv;
    const char* name = variant.name;
    for (int64_t k : {1, 7, 16, 17, 100, 1000, 40000}) {
      const int64_t rows = k > 1000 ? 3 : 13;
      for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
        Sparse s = make(rows, k, sparsity, rng);
        const std::unique_ptr<uint16_t[]> columns = csr16_columns(s, rows, k);
        std::vector<float> bias(rows);
        for (auto& b : bias) b = float(rng() % 7) - 3.0f;
        for (int64_t cols_x : {1, 5, 16, 17, 33, 130}) {
          if (k <= 1000 || cols_x == 17) check_csr16_spmm(variant, s, columns.get(), rows, k, cols_x, bias, rng);
        }
        for (int64_t batch : {1, 2, 3, 4}) {
          std::unique_ptr<float[]> x(new float[batch * k]);
          std::vector<float> xs(batch * k);
          for (int64_t i = 0; i < batch * k; ++i) x[i] = xs[i] = float(rng() % 11) - 5.0f;
          std::vector<float> y(batch * rows, NAN);
          EXPECT(gemv({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), rows, k}, {x.get(), batch, bias.data(), y.data()}, {0, rows}).ok());
          for (int64_t b = 0; b < batch; ++b)
            for (int64_t r = 0; r < rows; ++r) {
              // Sums of up to 40000 terms cancel: the fp32 rounding of either order scales with
              // the sum of the terms' magnitudes, not with the result.
              float magnitude = 0.0f;
              for (int64_t c = 0; c < k; ++c) magnitude += std::fabs(s.dense[r * k + c] * xs[b * k + c]);
              const float expected = expected_dot(s, xs, bias, k, b, r);
              EXPECT(std::fabs(y[b * rows + r] - expected) <= 1e-4f * (1.0f + std::fabs(expected)) + 1e-6f * magnitude);
            }
        }
      }
    }
    Sparse s = make(6, 40, 0.5, rng);
    const std::unique_ptr<uint16_t[]> columns = csr16_columns(s, 6, 40);
    columns[s.offsets[3]] = 65535;  // row 3 names a column far past k
    std::unique_ptr<float[]> x(new float[40 * 20]);
    for (int64_t c = 0; c < 40 * 20; ++c) x[c] = 1.0f;
    std::vector<float> y(6 * 20);
    const Status status = gemv({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40}, {x.get(), 1, nullptr, y.data()}, {0, 6});
    EXPECT(status.code == StatusCode::kCorruptMeta && status.row == 3 && status.col == 65535);
    {
      // Batch 1 over the row ranges threads get (the AVX-512 GEMV walks the two halves of a range in
      // lockstep): the range's rows right, the others untouched; of two rows naming columns past k,
      // the first is named even where the second half reaches its own first.
      Sparse wide = make(37, 300, 0.5, rng);
      const std::unique_ptr<uint16_t[]> wide_columns = csr16_columns(wide, 37, 300);
      std::vector<float> x1(300), no_bias;
      for (auto& e : x1) e = float(rng() % 11) - 5.0f;
      for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{3, 4}, {3, 10}, {5, 37}, {0, 36}, {0, 37}}) {
        std::vector<float> y1(37, NAN);
        EXPECT(gemv({wide.values.get(), ValueType::kFloat32, wide_columns.get(), wide.offsets.data(), 37, 300}, {x1.data(), 1, nullptr, y1.data()}, {begin, end}).ok());
        for (int64_t r = 0; r < 37; ++r) {
          EXPECT(r >= begin && r < end ? close(y1[r], expected_dot(wide, x1, no_bias, 300, 0, r)) : std::isnan(y1[r]));
        }
      }
      wide_columns[wide.offsets[10] + 100] = 300;  // past the first 64-nonzero block of each row
      wide_columns[wide.offsets[20]] = 301;
      std::vector<float> y1(37);
      EXPECT(gemv({wide.values.get(), ValueType::kFloat32, wide_columns.get(), wide.offsets.data(), 37, 300}, {x1.data(), 1, nullptr, y1.data()}, {0, 36}).row == 10);
    }
    const Status spmm_status = variant.spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40}, {x.get(), 20, 20, nullptr, Activation::kNone, y.data(), 20}, {0, 6});
    EXPECT(spmm_status.code == StatusCode::kCorruptMeta && spmm_status.row == 3);
    columns[s.offsets[3]] = 40;  // just past k, in the last k-block's range of a 16-bit compare
    EXPECT(variant.spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40}, {x.get(), 20, 20, nullptr, Activation::kNone, y.data(), 20}, {0, 6}).row == 3);
    // Outside the contract: k past 16-bit indices (or 0) is refused; no columns of X, no outputs.
    for (int64_t bad_k : {int64_t(0), kCsr16MaxColumns + 1}) {
      EXPECT(variant.spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, bad_k}, {x.get(), 20, 20, nullptr, Activation::kNone, y.data(), 20}, {0, 6}).code == StatusCode::kBadArgument);
    }
    std::vector<float> untouched(6, NAN);
    EXPECT(variant.spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40}, {x.get(), 20, 0, nullptr, Activation::kNone, untouched.data(), 1}, {0, 6}).ok());
    for (float v : untouched) EXPECT(std::isnan(v));
    EXPECT(gemv({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40}, {x.get(), 5, nullptr, y.data()}, {0, 6}).code == StatusCode::kBadArgument);
    std::printf("csr16 GEMV and SpMM (%s) checked\n", name);
  }
}


#if defined(PRUNEKIT_HAVE_AVX512BF16) || defined(PRUNEKIT_HAVE_AMX)
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
  w.values.reset(new uint16_t[nnz > 0 ? nnz : 1]);
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
#endif

#if defined(PRUNEKIT_HAVE_AVX512BF16) && (defined(__x86_64__) || defined(_M_X64))
// The bf16 x bf16 GEMV against an fp32 reference on the same bf16 numbers (products are exact,
// only the order of the fp32 sums differs); odd k covers single-word and partial last chunks, and the
// values buffer holds exactly nnz entries (whole-vector loads must stop before its end).
void check_gemv_bf16(std::mt19937& rng) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512vbmi2")) return;
  for (int64_t k : {1, 15, 16, 17, 31, 32, 33, 48, 100, 256, 1000}) {
    for (int64_t rows : {1, 5, 33}) {
      for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
        const Bf16Weight w = make_bf16(rows, k, sparsity, rng);
        for (int64_t batch : {1, 2, 3, 4}) {
          std::vector<float> x(batch * k);
          std::vector<uint16_t> x16(batch * k);
          fill_x_bf16(rng, x, x16.data());
          std::vector<float> y(batch * rows, NAN);
          EXPECT(bitmap_bf16_gemv_avx512bf16({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k}, {x16.data(), batch, w.bias.data(), y.data()}, {0, rows}).ok());
          expect_bf16_result(w, rows, k, batch, x, y.data());
        }
      }
    }
  }
  {
    // Batch 1 over the row ranges threads get (the GEMV walks the two halves of a range in
    // lockstep, the last rows of the values alone): the range's rows right, the others untouched;
    // of corrupt rows in both halves, the first is named.
    const Bf16Weight w = make_bf16(37, 300, 0.5, rng);
    std::vector<float> x(300);
    std::vector<uint16_t> x16(300);
    fill_x_bf16(rng, x, x16.data());
    std::vector<float> full(37);
    EXPECT(bitmap_bf16_gemv_avx512bf16({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), 37, 300}, {x16.data(), 1, w.bias.data(), full.data()}, {0, 37}).ok());
    expect_bf16_result(w, 37, 300, 1, x, full.data());
    for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{3, 4}, {3, 10}, {5, 37}, {0, 36}}) {
      std::vector<float> y(37, NAN);
      EXPECT(bitmap_bf16_gemv_avx512bf16({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), 37, 300}, {x16.data(), 1, w.bias.data(), y.data()}, {begin, end}).ok());
      for (int64_t r = 0; r < 37; ++r) EXPECT(r >= begin && r < end ? close(y[r], full[r]) : std::isnan(y[r]));
    }
    std::vector<int64_t> skewed = w.s.offsets;
    skewed[11] -= 1;  // rows 10 and 11
    skewed[21] -= 1;  // rows 20 and 21, reached first in lockstep over [0, 36)
    std::vector<float> y(37);
    EXPECT(bitmap_bf16_gemv_avx512bf16({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), skewed.data(), 37, 300}, {x16.data(), 1, nullptr, y.data()}, {0, 36}).row == 10);
  }
  {
    // Row 2 marks 32, 31, 1 and 0 columns in its four 32-column chunks; its pair partner, row 0, may
    // use whole-vector loads: none may run past the values' end.
    const CorruptToTheEnd w;
    std::unique_ptr<uint16_t[]> values(new uint16_t[128]);  // exactly: ASan catches a read past the end
    for (int64_t i = 0; i < 128; ++i) values[i] = to_bf16(1.0f);
    std::vector<uint16_t> x16(w.kColumns, to_bf16(1.0f));
    std::vector<float> y(w.kRows);
    const Status status = bitmap_bf16_gemv_avx512bf16({values.get(), ValueType::kBFloat16, w.bitmap.data(), w.offsets.data(), w.kRows, w.kColumns}, {x16.data(), 1, nullptr, y.data()}, {0, w.kRows});
    EXPECT(status.code == StatusCode::kCorruptMeta && status.row == 2);
  }
  // A row whose offsets disagree with its bitmap is reported, never read past.
  Sparse s = make(8, 70, 0.5, rng);
  std::vector<int64_t> skewed = s.offsets;
  skewed[7] -= 1;
  std::unique_ptr<uint16_t[]> values(new uint16_t[s.offsets[8]]);
  for (int64_t i = 0; i < s.offsets[8]; ++i) values[i] = to_bf16(s.values[i]);
  std::vector<uint16_t> x16(70, to_bf16(1.0f));
  std::vector<float> y(8);
  EXPECT(!bitmap_bf16_gemv_avx512bf16({values.get(), ValueType::kBFloat16, s.bitmap.data(), skewed.data(), 8, 70}, {x16.data(), 1, nullptr, y.data()}, {0, 8}).ok());
  std::printf("bitmap kernels (avx512bf16 bf16 GEMV) checked\n");
}
#endif

#if defined(PRUNEKIT_HAVE_AMX)
// The AMX bf16 SpMM against an fp32 reference on the same bf16 numbers: weight-row blocks cut
// short by rows and by the row range, k past the last whole 32-column chunk, odd numbers of
// 16-row batch tiles; values, packed x and y allocated exactly and y poisoned with NaN.
void check_spmm_amx(std::mt19937& rng) {
  if (!amx_bf16_usable()) {
    std::printf("AMX bf16 SpMM skipped: no AMX-BF16 here\n");
    return;
  }
  // (k, rows, batches): the last shape's packed x (18 batch tiles x 63 chunks) exceeds a k-block,
  // so its columns run in two k-blocks (56 + 7 chunks) with y accumulated over them.
  struct Case {
    int64_t k, rows;
    std::vector<int64_t> batches;
  };
  std::vector<Case> cases;
  for (int64_t k : {1, 31, 32, 33, 100, 1000}) {
    for (int64_t rows : {1, 5, 33, 70}) cases.push_back({k, rows, {1, 5, 16, 17, 33}});
  }
  cases.push_back({2000, 37, {280}});
  for (const Case& shape : cases) {
    const int64_t k = shape.k, rows = shape.rows;
    for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
      const Bf16Weight w = make_bf16(rows, k, sparsity, rng);
      for (int64_t batch : shape.batches) {
        std::vector<float> x(batch * k);
        std::unique_ptr<uint16_t[]> x16(new uint16_t[batch * k]);
        fill_x_bf16(rng, x, x16.get());
        const int64_t packed_elements = bitmap_bf16_packed_x_elements_amx(batch, k);
        std::unique_ptr<uint16_t[]> packed(new uint16_t[packed_elements]);
        bitmap_bf16_pack_x_amx(x16.get(), batch, k, packed.get(), 0, (k + 31) / 32);
        std::unique_ptr<float[]> y(new float[batch * rows]);
        for (int64_t i = 0; i < batch * rows; ++i) y[i] = NAN;
        // Two row ranges, as two threads would run them; the split is not a multiple of 32.
        const int64_t split = rows / 3;
        EXPECT(bitmap_bf16_spmm_amx({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k}, {packed.get(), batch, w.bias.data(), y.get(), ValueType::kFloat32}, {0, split}).ok());
        EXPECT(bitmap_bf16_spmm_amx({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k}, {packed.get(), batch, w.bias.data(), y.get(), ValueType::kFloat32}, {split, rows}).ok());
        expect_bf16_result(w, rows, k, batch, x, y.get());
        // bf16 output: the same sums rounded as torch rounds fp32 to bf16, bit for bit.
        std::unique_ptr<uint16_t[]> y16(new uint16_t[batch * rows]);
        for (int64_t i = 0; i < batch * rows; ++i) y16[i] = 0xffff;  // a NaN pattern the kernel never writes
        EXPECT(bitmap_bf16_spmm_amx({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k}, {packed.get(), batch, w.bias.data(), y16.get(), ValueType::kBFloat16}, {0, split}).ok());
        EXPECT(bitmap_bf16_spmm_amx({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k}, {packed.get(), batch, w.bias.data(), y16.get(), ValueType::kBFloat16}, {split, rows}).ok());
        for (int64_t i = 0; i < batch * rows; ++i) EXPECT(y16[i] == prunekit::float_to_bf16(y[i]));
      }
    }
  }
  // Offsets that disagree with the bitmap, and a bit past k, are reported, never read past.
  const auto run_on_ones = [](const Bf16Weight& w, const std::vector<uint16_t>& bitmap,
                              const std::vector<int64_t>& offsets, int64_t rows, int64_t k, int64_t batch) {
    std::vector<uint16_t> x16(batch * k, to_bf16(1.0f));
    std::vector<uint16_t> packed(bitmap_bf16_packed_x_elements_amx(batch, k));
    bitmap_bf16_pack_x_amx(x16.data(), batch, k, packed.data(), 0, (k + 31) / 32);
    std::vector<float> y(batch * rows);
    return bitmap_bf16_spmm_amx({w.values.get(), ValueType::kBFloat16, bitmap.data(), offsets.data(), rows, k}, {packed.data(), batch, nullptr, y.data(), ValueType::kFloat32}, {0, rows});
  };
  const Bf16Weight w = make_bf16(8, 70, 0.5, rng);
  std::vector<int64_t> skewed = w.s.offsets;
  skewed[7] -= 1;
  const Status short_row = run_on_ones(w, w.s.bitmap, skewed, 8, 70, 5);
  EXPECT(short_row.code == StatusCode::kCorruptMeta && short_row.row == 6);
  std::vector<uint16_t> past_k = w.s.bitmap;
  past_k[2 * 5 - 1] |= 1u << 15;  // row 1, column 79 of 70
  const Status past = run_on_ones(w, past_k, w.s.offsets, 8, 70, 5);
  EXPECT(past.code == StatusCode::kCorruptMeta && past.row == 1);
  // In k-blocks (k 2000, 18 batch tiles): a row that claims one value more than its bitmap holds
  // is found at the end of its last k-block.
  const Bf16Weight wide = make_bf16(37, 2000, 0.5, rng);
  std::vector<int64_t> long_row = wide.s.offsets;
  long_row[20] += 1;
  const Status long_status = run_on_ones(wide, wide.s.bitmap, long_row, 37, 2000, 280);
  EXPECT(long_status.code == StatusCode::kCorruptMeta && long_status.row == 19);
  std::printf("AMX bf16 SpMM checked\n");
}
#endif

}  // namespace

// fp32 -> bf16 as torch converts a tensor: ties to even, overflow to infinity, NaN to 0xffff.
void check_float_to_bf16() {
  const std::pair<uint32_t, uint16_t> cases[] = {
      {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81},
      {0x7f7fffffu, 0x7f80}, {0x7f800000u, 0x7f80}, {0xff800000u, 0xff80}, {0x80000000u, 0x8000},
      {0x00000001u, 0x0000}, {0x00018000u, 0x0002}, {0x7fc00000u, 0xffff}, {0xffc00001u, 0xffff},
      {0x7f800001u, 0xffff}};
  for (const auto& [bits, expected] : cases) {
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    EXPECT(prunekit::float_to_bf16(value) == expected);
  }
}

int main() {
  std::mt19937 rng(0);
  check_float_to_bf16();
  for (const auto& v : variants()) check_variant(v, rng);
  check_csr16(rng);
#if defined(PRUNEKIT_HAVE_AVX512BF16) && (defined(__x86_64__) || defined(_M_X64))
  check_gemv_bf16(rng);
#endif
#if defined(PRUNEKIT_HAVE_AMX)
  check_spmm_amx(rng);
#endif
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  return 0;
}
