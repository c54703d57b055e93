// Torch-free tests of the fp32 bitmap GEMV and SpMM, every kernel of the tables of the ISAs this
// CPU runs: outputs poisoned with NaN first (every entry must be written), remainder words /
// tiles / batches, sparsity 0, 0.5, 0.9 and 1, corrupt offsets reported without reading out of
// bounds (run under AddressSanitizer: values are allocated exactly, with no slack).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "harness.h"
#include "prunekit/half.h"
#include "prunekit/kernel_config.h"
#include "sparse_weights.h"

namespace {

using namespace prunekit::cpu;
using namespace prunekit::test;

struct Variant {
  const char* name;
  BitmapGemvFn gemv;
  BitmapSpmmFn spmm;
};

void check_variant(const Variant& v, std::mt19937& rng) {
  for (int64_t k : {1, 15, 16, 17, 100, 256}) {
    for (int64_t rows : {1, 5, 33}) {
      for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
        Sparse s = make(rows, k, sparsity, rng);
        std::vector<float> bias(rows);
        for (auto& b : bias) b = float(rng() % 7) - 3.0f;
        for (int64_t batch : {1, 2, 3, 4}) {
          std::vector<float> x(batch * k), y = poisoned(batch * rows);
          for (auto& e : x) e = float(rng() % 11) - 5.0f;
          EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), rows, k},
                        {x.data(), batch, bias.data(), y.data()}, {0, rows})
                     .ok());
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
            std::vector<float> x = poisoned(k * ld), y = poisoned(rows * ld);
            for (int64_t c = 0; c < k; ++c)
              for (int64_t p = 0; p < cols_x; ++p) x[c * ld + p] = float(rng() % 11) - 5.0f;
            EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), rows, k},
                          {x.data(), ld, cols_x, bias.data(), Activation::kRelu6, y.data(), ld}, {0, rows})
                       .ok());
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
    std::vector<float> x(k * cols_x), y = poisoned(rows * cols_x);
    for (auto& e : x) e = float(rng() % 11) - 5.0f;
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 1003}, {1003, rows}}) {
      EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), rows, k},
                    {x.data(), cols_x, cols_x, nullptr, Activation::kNone, y.data(), cols_x}, {begin, end})
                 .ok());
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t p = 0; p < cols_x; ++p) {
        float expected = 0.0f;
        for (int64_t c = 0; c < k; ++c) expected += s.dense[r * k + c] * x[c * cols_x + p];
        EXPECT(close(y[r * cols_x + p], expected));
      }
  }
  // Half-dense rows, 2:4 or not (AVX2 and NEON take a fixed-offset path for 2:4 rows), values
  // exact-size, fp32 and bf16.
  for (int64_t k : {8, 16, 48, 256}) {
    Sparse s = make_half_dense(5, k, rng);
    const int64_t nnz = s.offsets[5];
    std::unique_ptr<uint16_t[]> halves(new uint16_t[nnz]);
    for (int64_t i = 0; i < nnz; ++i) halves[i] = to_bf16(s.values[i]);
    std::vector<float> rounded(s.dense);  // the weight as the bf16 kernels see it
    for (auto& e : rounded) e = from_bf16(to_bf16(e));
    std::vector<float> bias(5, 0.5f);
    for (int64_t batch : {1, 2, 3, 4}) {
      std::vector<float> x(batch * k), y = poisoned(batch * 5), y16 = poisoned(batch * 5);
      for (auto& e : x) e = float(rng() % 11) - 5.0f;
      EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), 5, k},
                    {x.data(), batch, bias.data(), y.data()}, {0, 5})
                 .ok());
      EXPECT(v.gemv({halves.get(), ValueType::kBFloat16, s.bitmap.data(), s.offsets.data(), 5, k},
                    {x.data(), batch, bias.data(), y16.data()}, {0, 5})
                 .ok());
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < 5; ++r) {
          EXPECT(close(y[b * 5 + r], expected_dot(s, x, bias, k, b, r)));
          float expected = bias[r];
          for (int64_t c = 0; c < k; ++c) expected += rounded[r * k + c] * x[b * k + c];
          EXPECT(close(y16[b * 5 + r], expected));
        }
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
      EXPECT(v.gemv({values.get(), ValueType::kFloat32, s.bitmap.data(), offsets.data(), rows, k},
                    {x.data(), 1, nullptr, y.data()}, {0, rows})
                 .row == bad);
      for (int64_t cols_x : {5, 16, 40}) {
        const Status status =
            v.spmm({values.get(), ValueType::kFloat32, s.bitmap.data(), offsets.data(), rows, k},
                   {x.data(), cols_x, cols_x, nullptr, Activation::kNone, y.data(), cols_x}, {0, rows});
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
    for (int64_t batch : {1, 2, 4}) {  // the GEMV widens bf16 values in registers
      std::vector<float> x(batch * k), y = poisoned(batch * rows);
      for (auto& e : x) e = float(rng() % 11) - 5.0f;
      EXPECT(v.gemv({halves.get(), ValueType::kBFloat16, s.bitmap.data(), s.offsets.data(), rows, k},
                    {x.data(), batch, nullptr, y.data()}, {0, rows})
                 .ok());
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < rows; ++r) {
          float expected = 0.0f;
          for (int64_t c = 0; c < k; ++c) expected += rounded[r * k + c] * x[b * k + c];
          EXPECT(close(y[b * rows + r], expected));
        }
    }
    for (int64_t cols_x : {3, 16, 40}) {
      std::vector<float> x(k * cols_x), y = poisoned(rows * cols_x);
      for (auto& e : x) e = float(rng() % 11) - 5.0f;
      EXPECT(v.spmm({halves.get(), ValueType::kBFloat16, s.bitmap.data(), s.offsets.data(), rows, k},
                    {x.data(), cols_x, cols_x, nullptr, Activation::kNone, y.data(), cols_x}, {0, rows})
                 .ok());
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
    EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), 5, 24},
                  {x.data(), cols_x, cols_x, nullptr, activation, y.data(), cols_x}, {0, 5})
               .ok());
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
      std::vector<float> y = poisoned(37);
      EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), s.offsets.data(), 37, 100},
                    {x.data(), 1, nullptr, y.data()}, {begin, end})
                 .ok());
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
    EXPECT(v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), skewed.data(), 37, 100},
                  {x.data(), 1, nullptr, y.data()}, {0, 36})
               .row == 10);
  }
  {
    const CorruptToTheEnd w;
    std::unique_ptr<float[]> values = exact_buffer<float>(128, 1.0f);  // exactly: ASan catches a read past the end
    std::vector<float> x(w.kColumns, 1.0f), y(w.kRows);
    const Status status =
        v.gemv({values.get(), ValueType::kFloat32, w.bitmap.data(), w.offsets.data(), w.kRows, w.kColumns},
               {x.data(), 1, nullptr, y.data()}, {0, w.kRows});
    EXPECT(status.code == StatusCode::kCorruptMeta && status.row == 2);
  }
  // Offsets that disagree with the bitmap are reported, never followed past the values.
  Sparse s = make(8, 40, 0.5, rng);
  std::vector<int64_t> skewed = s.offsets;
  skewed[8] += 0;
  skewed[7] -= 1;  // row 6 one short, row 7 one long
  std::vector<float> x(40 * 3, 1.0f), y(8 * 3);
  EXPECT(!v.gemv({s.values.get(), ValueType::kFloat32, s.bitmap.data(), skewed.data(), 8, 40},
                 {x.data(), 1, nullptr, y.data()}, {0, 8})
              .ok());
  EXPECT(!v.spmm({s.values.get(), ValueType::kFloat32, s.bitmap.data(), skewed.data(), 8, 40},
                 {x.data(), 3, 3, nullptr, Activation::kNone, y.data(), 3}, {0, 8})
              .ok());
  std::printf("bitmap kernels (%s) checked\n", v.name);
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  for (const auto* table : tables_with_own(&CpuKernelConfig::bitmap_gemv)) {
    check_variant({isa_name(table->isa), table->bitmap_gemv, table->bitmap_spmm}, rng);
  }
  return finish();
}
