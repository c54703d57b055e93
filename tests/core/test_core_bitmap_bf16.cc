// Torch-free tests of the bf16 x bf16 kernels (the AVX-512 BF16 GEMV, the AMX SpMM), where the
// kernel tables of the ISAs this CPU runs have them, against an fp32 reference on the same bf16
// numbers.
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

// The bf16 x bf16 GEMV against an fp32 reference on the same bf16 numbers (products are exact,
// only the order of the fp32 sums differs); odd k covers single-word and partial last chunks, and the
// values buffer holds exactly nnz entries (whole-vector loads must stop before its end).
void check_gemv_bf16(const char* name, BitmapBf16GemvFn gemv, std::mt19937& rng) {
  for (int64_t k : {1, 15, 16, 17, 31, 32, 33, 48, 100, 256, 1000}) {
    for (int64_t rows : {1, 5, 33}) {
      for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
        const Bf16Weight w = make_bf16(rows, k, sparsity, rng);
        for (int64_t batch : {1, 2, 3, 4}) {
          std::vector<float> x(batch * k);
          std::vector<uint16_t> x16(batch * k);
          fill_x_bf16(rng, x, x16.data());
          std::vector<float> y = poisoned(batch * rows);
          EXPECT(gemv({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k},
                      {x16.data(), batch, w.bias.data(), y.data()}, {0, rows})
                     .ok());
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
    EXPECT(gemv({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), 37, 300},
                {x16.data(), 1, w.bias.data(), full.data()}, {0, 37})
               .ok());
    expect_bf16_result(w, 37, 300, 1, x, full.data());
    for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{3, 4}, {3, 10}, {5, 37}, {0, 36}}) {
      std::vector<float> y = poisoned(37);
      EXPECT(gemv({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), 37, 300},
                  {x16.data(), 1, w.bias.data(), y.data()}, {begin, end})
                 .ok());
      for (int64_t r = 0; r < 37; ++r) EXPECT(r >= begin && r < end ? close(y[r], full[r]) : std::isnan(y[r]));
    }
    std::vector<int64_t> skewed = w.s.offsets;
    skewed[11] -= 1;  // rows 10 and 11
    skewed[21] -= 1;  // rows 20 and 21, reached first in lockstep over [0, 36)
    std::vector<float> y(37);
    EXPECT(gemv({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), skewed.data(), 37, 300},
                {x16.data(), 1, nullptr, y.data()}, {0, 36})
               .row == 10);
  }
  {
    // Row 2 marks 32, 31, 1 and 0 columns in its four 32-column chunks; its pair partner, row 0, may
    // use whole-vector loads: none may run past the values' end.
    const CorruptToTheEnd w;
    std::unique_ptr<uint16_t[]> values =
        exact_buffer<uint16_t>(128, to_bf16(1.0f));  // exactly: ASan catches a read past the end
    std::vector<uint16_t> x16(w.kColumns, to_bf16(1.0f));
    std::vector<float> y(w.kRows);
    const Status status =
        gemv({values.get(), ValueType::kBFloat16, w.bitmap.data(), w.offsets.data(), w.kRows, w.kColumns},
             {x16.data(), 1, nullptr, y.data()}, {0, w.kRows});
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
  EXPECT(!gemv({values.get(), ValueType::kBFloat16, s.bitmap.data(), skewed.data(), 8, 70},
               {x16.data(), 1, nullptr, y.data()}, {0, 8})
              .ok());
  std::printf("bitmap bf16 GEMV (%s) checked\n", name);
}
// The AMX bf16 SpMM against an fp32 reference on the same bf16 numbers: weight-row blocks cut
// short by rows and by the row range, k past the last whole 32-column chunk, odd numbers of
// 16-row batch tiles; values, packed x and y allocated exactly and y poisoned with NaN.
void check_spmm_amx(const AmxBf16Kernels& amx, std::mt19937& rng) {
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
        const int64_t packed_elements = amx.packed_x_elements(batch, k);
        std::unique_ptr<uint16_t[]> packed(new uint16_t[packed_elements]);
        amx.pack_x(x16.get(), batch, k, packed.get(), 0, (k + 31) / 32);
        std::unique_ptr<float[]> y = exact_buffer<float>(batch * rows, NAN);
        // Two row ranges, as two threads would run them; the split is not a multiple of 32.
        const int64_t split = rows / 3;
        EXPECT(amx.spmm({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k},
                        {packed.get(), batch, w.bias.data(), y.get(), ValueType::kFloat32}, {0, split})
                   .ok());
        EXPECT(amx.spmm({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k},
                        {packed.get(), batch, w.bias.data(), y.get(), ValueType::kFloat32}, {split, rows})
                   .ok());
        expect_bf16_result(w, rows, k, batch, x, y.get());
        // bf16 output: the same sums rounded as torch rounds fp32 to bf16, bit for bit.
        std::unique_ptr<uint16_t[]> y16 =
            exact_buffer<uint16_t>(batch * rows, 0xffff);  // a NaN pattern the kernel never writes
        EXPECT(amx.spmm({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k},
                        {packed.get(), batch, w.bias.data(), y16.get(), ValueType::kBFloat16}, {0, split})
                   .ok());
        EXPECT(amx.spmm({w.values.get(), ValueType::kBFloat16, w.s.bitmap.data(), w.s.offsets.data(), rows, k},
                        {packed.get(), batch, w.bias.data(), y16.get(), ValueType::kBFloat16}, {split, rows})
                   .ok());
        for (int64_t i = 0; i < batch * rows; ++i) EXPECT(y16[i] == prunekit::float_to_bf16(y[i]));
      }
    }
  }
  // Offsets that disagree with the bitmap, and a bit past k, are reported, never read past.
  const auto run_on_ones = [&amx](const Bf16Weight& w, const std::vector<uint16_t>& bitmap,
                                  const std::vector<int64_t>& offsets, int64_t rows, int64_t k, int64_t batch) {
    std::vector<uint16_t> x16(batch * k, to_bf16(1.0f));
    std::vector<uint16_t> packed(amx.packed_x_elements(batch, k));
    amx.pack_x(x16.data(), batch, k, packed.data(), 0, (k + 31) / 32);
    std::vector<float> y(batch * rows);
    return amx.spmm({w.values.get(), ValueType::kBFloat16, bitmap.data(), offsets.data(), rows, k},
                    {packed.data(), batch, nullptr, y.data(), ValueType::kFloat32}, {0, rows});
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
}  // namespace

int main() {
  std::mt19937 rng(0);
  for (const auto* table : tables_with_own(&CpuKernelConfig::bitmap_bf16_gemv)) {
    check_gemv_bf16(isa_name(table->isa), table->bitmap_bf16_gemv, rng);
  }
  bool amx_checked = false;
  for (const auto* table : runnable_tables()) {
    if (table->bitmap_bf16_amx.spmm && !amx_checked) {
      check_spmm_amx(table->bitmap_bf16_amx, rng);
      amx_checked = true;
    }
  }
  if (!amx_checked) std::printf("AMX bf16 SpMM skipped: not compiled in or no AMX-BF16 here\n");
  return finish();
}
