// The sm90 metadata conversion (prunekit/format24_sm90.h) checked against CUTLASS 3's own
// definition of the layout: the CuTe layout that Sm90GemmSparseConfig::fill_layoutE builds for
// the GEMM's configuration (fp16, K-major A, TileK 128), evaluated on the host. Built only when
// the CUTLASS headers are found (tests/core/CMakeLists.txt); no GPU needed.
//   1. word_index(row, word_col) == layoutE(row, 16 * word_col) / 16 for every word of several
//      shapes (and the layout puts a word's 16 columns in 16 consecutive bits);
//   2. decoding a converted buffer through layoutE alone gives back every group's kept columns
//      of a random 2:4 matrix compressed by prunekit's CPU kernel (torch's layout), and the
//      padding is zero.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cutlass/gemm/collective/builders/sm90_sparse_config.inl"
#include "harness.h"
#include "prunekit/format24.h"
#include "prunekit/format24_sm90.h"
#include "prunekit/kernels_cpu.h"

namespace {

namespace sm90 = prunekit::format24::sm90;

// The configuration the sm90 GEMM's collective builder picks for fp16/bf16 A with TileK 128:
// sparse_elem<2, half_t> for A, sparse_elem<8, uint8_t> for E (cute's sparse GMMA traits), and
// MinTileShapeK = min(TileK, 128).
using Config = cutlass::Sm90GemmSparseConfig<cute::sparse_elem<2, cutlass::half_t>, cute::GMMA::Major::K,
                                             cute::sparse_elem<8, uint8_t>, cute::Int<128>>;
static_assert(int(Config::TensorEAtomM{}) == sm90::kAtomRows, "atom rows differ from CUTLASS's");
static_assert(int(Config::TensorEAtomK{}) == sm90::kAtomCols, "atom columns differ from CUTLASS's");

auto layout_e(int64_t rows, int64_t k) { return Config::fill_layoutE(cute::make_tuple(int(rows), 1, int(k), 1)); }

void check_word_index(int64_t rows, int64_t k) {
  const auto layout = layout_e(rows, k);
  const int64_t rows_padded = sm90::padded_rows(rows);
  EXPECT(int64_t(cute::cosize(layout)) == sm90::word_count(rows, k) * 16);
  int bad = 0;
  for (int64_t row = 0; row < rows_padded; ++row) {
    for (int64_t word_col = 0; word_col < sm90::padded_cols(k) / 16; ++word_col) {
      const int64_t first = layout(int(row), int(16 * word_col), 0);
      bool consecutive = first % 16 == 0;
      for (int c = 1; c < 16; ++c)
        consecutive = consecutive && int64_t(layout(int(row), int(16 * word_col + c), 0)) == first + c;
      if (!consecutive || sm90::word_index(row, word_col, rows_padded) != first / 16) ++bad;
    }
  }
  if (bad) std::fprintf(stderr, "rows %lld k %lld: %d words misplaced\n", (long long)rows, (long long)k, bad);
  EXPECT(bad == 0);
}

void check_conversion(int64_t rows, int64_t k, std::mt19937& rng) {
  // A random 2:4 matrix of nonzero 16-bit entries over all 11 group patterns.
  const int patterns[11][4] = {{0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}, {1, 1, 0, 0},
                               {1, 0, 1, 0}, {1, 0, 0, 1}, {0, 1, 1, 0}, {0, 1, 0, 1}, {0, 0, 1, 1}};
  std::uniform_int_distribution<int> pick(0, 10), bits(1, 0x7bff);
  std::vector<uint16_t> dense(rows * k);
  for (int64_t g = 0; g < rows * k / 4; ++g) {
    const int* p = patterns[pick(rng)];
    for (int i = 0; i < 4; ++i) dense[g * 4 + i] = p[i] ? uint16_t(bits(rng)) : 0;
  }
  std::vector<uint16_t> values(rows * k / 2), meta(rows * k / 16);
  const auto status =
      prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, 2, true, {0, rows});
  EXPECT(status.ok());

  std::vector<uint16_t> converted(sm90::word_count(rows, k), 0xbeef);
  for (int64_t i = 0; i < int64_t(converted.size()); ++i) sm90::convert_word(meta.data(), converted.data(), i, rows, k);

  // Decode through CUTLASS's layout only: logical index -> bit; a group's code is the nibble of
  // its first column.
  const auto layout = layout_e(rows, k);
  const auto* bytes = reinterpret_cast<const uint8_t*>(converted.data());
  auto code_at = [&](int64_t row, int64_t col) {
    const int64_t index = layout(int(row), int(col), 0);
    return (bytes[index / 8] >> (index % 8)) & 0xF;
  };
  int wrong = 0, dirty_padding = 0;
  for (int64_t row = 0; row < sm90::padded_rows(rows); ++row) {
    for (int64_t g = 0; g < sm90::padded_cols(k) / 4; ++g) {
      const int code = code_at(row, 4 * g);
      if (row >= rows || 4 * g >= k) {
        dirty_padding += code != 0;
        continue;
      }
      const int idx0 = code & 3, idx1 = code >> 2;
      // The kept columns hold the two values in order; the others are zero in the dense matrix.
      bool ok = idx0 < idx1 && dense[row * k + 4 * g + idx0] == values[row * (k / 2) + 2 * g] &&
                dense[row * k + 4 * g + idx1] == values[row * (k / 2) + 2 * g + 1];
      for (int c = 0; c < 4; ++c) ok = ok && (c == idx0 || c == idx1 || dense[row * k + 4 * g + c] == 0);
      wrong += !ok;
    }
  }
  if (wrong || dirty_padding) {
    std::fprintf(stderr, "rows %lld k %lld: %d groups wrong, %d padding codes nonzero\n", (long long)rows, (long long)k,
                 wrong, dirty_padding);
  }
  EXPECT(wrong == 0 && dirty_padding == 0);
}

}  // namespace

int main() {
  std::mt19937 rng(23);
  // Whole atoms, padded rows (32 of 64), padded columns (k % 128 == 32, 64, 96), several blocks.
  const int64_t shapes[][2] = {{64, 128},  {32, 32},   {32, 96},   {96, 160},
                               {128, 256}, {192, 384}, {224, 416}, {64, 1024}};
  for (const auto& shape : shapes) {
    check_word_index(shape[0], shape[1]);
    check_conversion(shape[0], shape[1], rng);
  }
  if (prunekit::test::failures == 0) std::printf("format24 sm90 metadata: all checks passed\n");
  return prunekit::test::finish();
}
