// Torch-free tests of the tiled bitmap layout (prunekit/bitmap_tiles.h): bitmap format -> tiles ->
// bitmap format bit for bit, the dense expansion, corrupt tiles found before any read outside the
// buffers (run under AddressSanitizer: every buffer is allocated exactly), the CPU walk of the
// CUDA kernels' decode (SIMT bit loop and mma fragments) against a plain product, and the CUDA
// kernels' launch plans. Shapes with partial panels and chunks, sparsity 0, 0.5, 0.9 and 1.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "harness.h"
#include "prunekit/bitmap_tiles_cpu.h"
#include "prunekit/half.h"

namespace {

using namespace prunekit;
using namespace prunekit::cpu;
using prunekit::test::exact_buffer;

// A bitmap-format weight of bf16 bits with exactly sized buffers.
struct BitmapWeight {
  int64_t rows, cols;
  std::vector<uint16_t> dense;  // bf16 bits, row-major
  std::vector<uint16_t> bitmap;
  std::vector<int64_t> row_offsets;
  std::unique_ptr<uint16_t[]> values;  // exactly nnz entries
  int64_t nnz = 0;
};

BitmapWeight make_weight(int64_t rows, int64_t cols, double sparsity, std::mt19937& rng) {
  BitmapWeight w{rows, cols, std::vector<uint16_t>(rows * cols), {}, {}, nullptr};
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  std::bernoulli_distribution keep(1.0 - sparsity);
  for (auto& e : w.dense) e = keep(rng) ? float_to_bf16(value(rng)) : 0;
  const int64_t words = (cols + 15) / 16;
  w.bitmap.assign(rows * words, 0);
  w.row_offsets.assign(rows + 1, 0);
  std::vector<uint16_t> packed;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      if ((w.dense[r * cols + c] & 0x7fff) == 0) continue;  // -0.0 counts as zero
      w.bitmap[r * words + c / 16] |= uint16_t(1u << (c % 16));
      packed.push_back(w.dense[r * cols + c]);
    }
    w.row_offsets[r + 1] = int64_t(packed.size());
  }
  for (auto& e : w.dense) e = (e & 0x7fff) ? e : 0;
  w.nnz = int64_t(packed.size());
  w.values = exact_buffer<uint16_t>(w.nnz);
  if (w.nnz) std::memcpy(w.values.get(), packed.data(), packed.size() * 2);
  return w;
}

struct Tiled {
  tiles::Grid grid;
  std::vector<uint16_t> tile_bitmap;
  std::vector<int64_t> tile_offsets;
  std::unique_ptr<uint16_t[]> values;
  int64_t size = 0;
  TilesView view() const { return {values.get(), 2, size, tile_bitmap.data(), tile_offsets.data(), grid}; }
};

Tiled to_tiles(const BitmapWeight& w) {
  Tiled t{tiles::tile_grid(w.rows, w.cols), {}, {}, nullptr};
  const BitmapSource src{w.values.get(), 2, w.bitmap.data(), w.row_offsets.data(), t.grid};
  const int64_t count = t.grid.panels * t.grid.chunks;
  std::vector<int64_t> marks(count);
  bitmap_tiles_marks_scalar(src, marks.data(), {0, t.grid.panels});
  t.tile_offsets.assign(count + 1, 0);
  for (int64_t i = 0; i < count; ++i) t.tile_offsets[i + 1] = t.tile_offsets[i] + tiles::run_length(marks[i]);
  t.size = t.tile_offsets[count];
  t.values = exact_buffer<uint16_t>(t.size, 0xffff);  // poison: the run padding must be written
  t.tile_bitmap.assign(count * tiles::kTileWordCount, 0xdead);
  bitmap_tiles_pack_scalar(src, t.tile_offsets.data(), t.values.get(), t.tile_bitmap.data(), {0, t.grid.panels});
  return t;
}

void check_round_trip(const BitmapWeight& w) {
  const Tiled t = to_tiles(w);
  const TilesView view = t.view();
  EXPECT(bitmap_tiles_validate_scalar(view, {0, t.grid.panels}).ok());
  for (int64_t i = 0; i + 1 < int64_t(t.tile_offsets.size()); ++i) {
    for (int64_t e = t.tile_offsets[i]; e < t.tile_offsets[i + 1]; ++e) EXPECT(t.values[e] != 0xffff);
  }
  std::vector<int64_t> row_marks(w.rows);
  bitmap_tiles_row_marks_scalar(view, row_marks.data(), {0, t.grid.panels});
  std::vector<int64_t> offsets(w.rows + 1, 0);
  for (int64_t r = 0; r < w.rows; ++r) offsets[r + 1] = offsets[r] + row_marks[r];
  EXPECT(offsets == w.row_offsets);
  std::unique_ptr<uint16_t[]> values = exact_buffer<uint16_t>(w.nnz);
  std::vector<uint16_t> bitmap(w.bitmap.size(), 0xdead);
  bitmap_tiles_unpack_scalar(view, offsets.data(), values.get(), bitmap.data(), {0, t.grid.panels});
  EXPECT(bitmap == w.bitmap);
  EXPECT(std::memcmp(values.get(), w.values.get(), size_t(w.nnz) * 2) == 0);
  std::vector<uint16_t> dense(w.rows * w.cols, 0xdead);
  bitmap_tiles_dense_scalar(view, dense.data(), {0, t.grid.panels});
  EXPECT(dense == w.dense);
}

void check_walks(const BitmapWeight& w, int64_t batch, std::mt19937& rng) {
  const Tiled t = to_tiles(w);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  // x (k, batch) as a 1x1 convolution's image: strides that are not those of linear.
  std::vector<float> x(w.cols * batch), bias(w.rows);
  for (auto& e : x) e = bf16_to_float(float_to_bf16(value(rng)));
  for (auto& e : bias) e = value(rng);
  std::vector<double> expected(batch * w.rows);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t m = 0; m < w.rows; ++m) {
      double sum = bias[m];
      for (int64_t k = 0; k < w.cols; ++k) sum += double(bf16_to_float(w.dense[m * w.cols + k])) * x[k * batch + n];
      expected[n * w.rows + m] = sum;
    }
  }
  for (TilesWalk walk : {TilesWalk::kSimt, TilesWalk::kMma}) {
    std::vector<float> y(batch * w.rows, NAN);
    const TilesOperands op{x.data(), batch, 1, batch, bias.data(), Activation::kNone, y.data(), w.rows, 1};
    EXPECT(bitmap_tiles_linear_scalar(t.view(), ScoreType::kBFloat16, op, walk, {0, t.grid.panels}).ok());
    for (size_t i = 0; i < y.size(); ++i) {
      if (!(std::fabs(y[i] - expected[i]) <= 1e-4 * (1.0 + std::fabs(expected[i])))) {
        std::fprintf(stderr, "walk %d %ldx%ld batch %ld: y[%zu] = %g, expected %g\n", int(walk), long(w.rows),
                     long(w.cols), long(batch), i, y[i], expected[i]);
        ++prunekit::test::failures;
        break;
      }
    }
    // ReLU6, fused where the sums are written.
    const TilesOperands relu6{x.data(), batch, 1, batch, bias.data(), Activation::kRelu6, y.data(), w.rows, 1};
    EXPECT(bitmap_tiles_linear_scalar(t.view(), ScoreType::kBFloat16, relu6, walk, {0, t.grid.panels}).ok());
    for (size_t i = 0; i < y.size(); ++i) {
      const double clipped = std::fmin(6.0, std::fmax(0.0, expected[i]));
      EXPECT(std::fabs(y[i] - clipped) <= 1e-4 * (1.0 + std::fabs(clipped)));
    }
  }
}

// A corrupt tile is reported before any value is read (ASan: values allocated exactly).
void check_corrupt(std::mt19937& rng) {
  const BitmapWeight w = make_weight(20, 70, 0.5, rng);
  std::vector<float> x(70, 1.0f), y(20);
  const TilesOperands op{x.data(), 1, 70, 1, nullptr, Activation::kNone, y.data(), 20, 1};
  {
    Tiled t = to_tiles(w);
    t.tile_offsets[1] += 8;  // tile 0's run claims 8 more values than its marks
    const Status status = bitmap_tiles_validate_scalar(t.view(), {0, t.grid.panels});
    EXPECT(!status.ok() && status.row == 0 && status.col == 0);
    for (TilesWalk walk : {TilesWalk::kSimt, TilesWalk::kMma}) {
      EXPECT(bitmap_tiles_linear_scalar(t.view(), ScoreType::kBFloat16, op, walk, {0, t.grid.panels}).code ==
             StatusCode::kCorruptMeta);
    }
  }
  {
    Tiled t = to_tiles(w);
    t.tile_offsets.back() += 8;  // the last run ends past the values
    const Status status = bitmap_tiles_validate_scalar(t.view(), {0, t.grid.panels});
    EXPECT(!status.ok() && status.row == 1 && status.col == 1);
  }
  {
    Tiled t = to_tiles(w);
    t.tile_bitmap[tiles::tile_word_index(1 * 2 + 1, 15, 3)] = 1;  // a mark in a padding row
    const Status status = bitmap_tiles_validate_scalar(t.view(), {0, t.grid.panels});
    EXPECT(!status.ok() && status.row == 1 && status.col == 1);
  }
  {
    Tiled t = to_tiles(w);
    t.tile_bitmap[tiles::tile_word_index(1, 0, 0)] |= 0x80;  // column 64 + 7 = 71 >= cols = 70
    EXPECT(!bitmap_tiles_validate_scalar(t.view(), {0, t.grid.panels}).ok());
  }
  {
    Tiled t = to_tiles(w);
    t.tile_offsets[1] += 1;  // misaligned run
    t.tile_offsets[2] += 1;
    EXPECT(!bitmap_tiles_validate_scalar(t.view(), {0, t.grid.panels}).ok());
  }
}

// Fragment geometry: each lane's A registers cover the 16 x 16 tile exactly once; B and C likewise.
void check_fragments() {
  int a[16][16] = {}, b[16][8] = {}, c[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      ++a[tiles::a_frag_row(lane, reg)][tiles::a_frag_col(lane, reg)];
      ++a[tiles::a_frag_row(lane, reg)][tiles::a_frag_col(lane, reg) + 1];
    }
    for (int reg = 0; reg < 2; ++reg) {
      ++b[tiles::b_frag_k(lane, reg)][tiles::b_frag_n(lane)];
      ++b[tiles::b_frag_k(lane, reg) + 1][tiles::b_frag_n(lane)];
    }
    for (int i = 0; i < 4; ++i) ++c[tiles::c_frag_row(lane, i)][tiles::c_frag_col(lane, i)];
  }
  for (int r = 0; r < 16; ++r) {
    for (int col = 0; col < 16; ++col) EXPECT(a[r][col] == 1);
    for (int n = 0; n < 8; ++n) EXPECT(b[r][n] == 1 && c[r][n] == 1);
  }
  // Lane l's pair: row l / 2, columns (l & 1) * 32 ..; the owner of word w of row r holds it.
  for (int r = 0; r < 16; ++r) {
    for (int w = 0; w < 4; ++w) {
      const int lane = tiles::word_owner(r, w);
      EXPECT(tiles::pair_row(lane) == r && tiles::pair_col(lane) + 16 * (w & 1) == 16 * w);
    }
  }
}

// The launch plans cover every chunk exactly once, every panel, and keep the SIMT kernel's x in
// its shared memory.
void check_plans() {
  for (int64_t rows : {1, 16, 100, 4096, 11008}) {
    for (int64_t cols : {1, 64, 65, 4096, 11008}) {
      const tiles::Grid grid = tiles::tile_grid(rows, cols);
      for (int sms : {1, 108, 132}) {
        for (int slots : {1, 2, 4, 8, 16}) {
          for (bool simt : {true, false}) {
            const tiles::DecodePlan plan = tiles::decode_plan(grid, slots, simt, sms);
            EXPECT(plan.panels_per_block >= 1 && tiles::kDecodeWarps % plan.panels_per_block == 0);
            EXPECT(plan.groups * plan.panels_per_block >= grid.panels);
            EXPECT((plan.groups - 1) * plan.panels_per_block < grid.panels);
            EXPECT(plan.chunks_per_split >= 1 && plan.splits * plan.chunks_per_split >= grid.chunks);
            EXPECT((plan.splits - 1) * plan.chunks_per_split < grid.chunks);
            if (simt)
              EXPECT(plan.chunks_per_split * tiles::kTileCols * tiles::simt_x_stride(slots) * 4 <=
                     tiles::kDecodeXBytes);
          }
        }
        for (int64_t batch : {17, 64, 2048}) {
          for (int64_t images : {1, 4}) {
            const tiles::GemmPlan plan = tiles::gemm_plan(grid, batch, images, sms);
            EXPECT(plan.blocks_m * tiles::kGemmRows >= rows && (plan.blocks_m - 1) * tiles::kGemmRows < rows);
            EXPECT(plan.blocks_n * tiles::kGemmCols >= batch);
            EXPECT(plan.splits * plan.chunks_per_split >= grid.chunks);
            EXPECT((plan.splits - 1) * plan.chunks_per_split < grid.chunks);
            EXPECT(images == 1 || plan.splits == 1);
          }
        }
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  check_fragments();
  check_plans();
  for (int64_t rows : {1, 15, 16, 17, 40}) {
    for (int64_t cols : {1, 16, 63, 64, 65, 130}) {
      for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
        const BitmapWeight w = make_weight(rows, cols, sparsity, rng);
        check_round_trip(w);
        for (int64_t batch : {1, 3}) check_walks(w, batch, rng);
      }
    }
  }
  check_corrupt(rng);
  return prunekit::test::finish();
}
