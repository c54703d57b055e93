// Torch-free tests of the CSR16 GEMV and SpMM, every kernel of the tables of the ISAs this CPU
// runs: column indices derived from the bitmap, values and indices
// allocated exactly (ASan), outputs poisoned with NaN, row lengths covering the unrolled loops'
// remainders, SpMM widths covering partial vectors and tiles, and an index past k reported before
// x is read (x is allocated exactly too).
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

struct Csr16Variant {
  const char* name;
  Csr16GemvFn gemv;
  Csr16SpmmFn spmm;
};

// Y = act(W X + bias) for X (k, cols_x): every entry against the dense product.
void check_csr16_spmm(const Csr16Variant& v, const Sparse& s, const uint16_t* columns, int64_t rows, int64_t k,
                      int64_t cols_x, const std::vector<float>& bias, Activation activation, std::mt19937& rng) {
  // Row strides past the width (as the linear ops' line-aligned x^T and y^T): the NaN gap of x
  // must not be read, that of y must stay untouched.
  const int64_t ldx = cols_x + 5, ldy = cols_x + 3;
  std::unique_ptr<float[]> x = exact_buffer<float>(k * ldx);
  for (int64_t i = 0; i < k * ldx; ++i) x[i] = i % ldx < cols_x ? float(rng() % 11) - 5.0f : NAN;
  std::vector<float> y = poisoned(rows * ldy);
  EXPECT(v.spmm({s.values.get(), ValueType::kFloat32, columns, s.offsets.data(), rows, k},
                {x.get(), ldx, cols_x, bias.data(), activation, y.data(), ldy}, {0, rows})
             .ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t p = 0; p < cols_x; ++p) {
      double expected = bias[r], magnitude = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        expected += double(s.dense[r * k + c]) * x[c * ldx + p];
        magnitude += std::fabs(double(s.dense[r * k + c]) * x[c * ldx + p]);
      }
      if (activation == Activation::kRelu6) expected = expected < 0 ? 0 : expected > 6 ? 6 : expected;
      EXPECT(std::fabs(y[r * ldy + p] - expected) <= 1e-4 * (1.0 + std::fabs(expected)) + 1e-6 * magnitude);
    }
    for (int64_t p = cols_x; p < ldy; ++p) EXPECT(std::isnan(y[r * ldy + p]));
  }
}

void check_csr16(std::mt19937& rng) {
  std::vector<Csr16Variant> kernels;
  for (const auto* table : tables_with_own(&CpuKernelConfig::csr16_spmm)) {
    kernels.push_back({isa_name(table->isa), table->csr16_gemv, table->csr16_spmm});
#if defined(PRUNEKIT_HAVE_AVX512)
    // The gather GEMV, which the table leaves out where gathers are slow (AMD): tested anyway.
    if (table->isa == Isa::kAvx512 && table->csr16_gemv != &csr16_gemv_avx512) {
      kernels.push_back({"avx512 (gather)", &csr16_gemv_avx512, table->csr16_spmm});
    }
#endif
  }
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
          if (k <= 1000 || cols_x == 17)
            check_csr16_spmm(variant, s, columns.get(), rows, k, cols_x, bias,
                             cols_x == 33 ? Activation::kRelu6 : Activation::kNone, rng);
        }
        for (int64_t batch : {1, 2, 3, 4}) {
          std::unique_ptr<float[]> x(new float[batch * k]);
          std::vector<float> xs(batch * k);
          for (int64_t i = 0; i < batch * k; ++i) x[i] = xs[i] = float(rng() % 11) - 5.0f;
          std::vector<float> y = poisoned(batch * rows);
          EXPECT(gemv({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), rows, k},
                      {x.get(), batch, bias.data(), y.data()}, {0, rows})
                     .ok());
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
    const Status status = gemv({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40},
                               {x.get(), 1, nullptr, y.data()}, {0, 6});
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
        std::vector<float> y1 = poisoned(37);
        EXPECT(gemv({wide.values.get(), ValueType::kFloat32, wide_columns.get(), wide.offsets.data(), 37, 300},
                    {x1.data(), 1, nullptr, y1.data()}, {begin, end})
                   .ok());
        for (int64_t r = 0; r < 37; ++r) {
          EXPECT(r >= begin && r < end ? close(y1[r], expected_dot(wide, x1, no_bias, 300, 0, r)) : std::isnan(y1[r]));
        }
      }
      wide_columns[wide.offsets[10] + 100] = 300;  // past the first 64-nonzero block of each row
      wide_columns[wide.offsets[20]] = 301;
      std::vector<float> y1(37);
      EXPECT(gemv({wide.values.get(), ValueType::kFloat32, wide_columns.get(), wide.offsets.data(), 37, 300},
                  {x1.data(), 1, nullptr, y1.data()}, {0, 36})
                 .row == 10);
    }
    const Status spmm_status =
        variant.spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40},
                     {x.get(), 20, 20, nullptr, Activation::kNone, y.data(), 20}, {0, 6});
    EXPECT(spmm_status.code == StatusCode::kCorruptMeta && spmm_status.row == 3);
    columns[s.offsets[3]] = 40;  // just past k, in the last k-block's range of a 16-bit compare
    EXPECT(variant
               .spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40},
                     {x.get(), 20, 20, nullptr, Activation::kNone, y.data(), 20}, {0, 6})
               .row == 3);
    // Outside the contract: k past 16-bit indices (or 0) is refused; no columns of X, no outputs.
    for (int64_t bad_k : {int64_t(0), kCsr16MaxColumns + 1}) {
      EXPECT(variant
                 .spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, bad_k},
                       {x.get(), 20, 20, nullptr, Activation::kNone, y.data(), 20}, {0, 6})
                 .code == StatusCode::kBadArgument);
    }
    std::vector<float> untouched = poisoned(6);
    EXPECT(variant
               .spmm({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40},
                     {x.get(), 20, 0, nullptr, Activation::kNone, untouched.data(), 1}, {0, 6})
               .ok());
    for (float v : untouched) EXPECT(std::isnan(v));
    EXPECT(gemv({s.values.get(), ValueType::kFloat32, columns.get(), s.offsets.data(), 6, 40},
                {x.get(), 5, nullptr, y.data()}, {0, 6})
               .code == StatusCode::kBadArgument);
    std::printf("csr16 GEMV and SpMM (%s) checked\n", name);
  }
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  check_csr16(rng);
  return finish();
}
