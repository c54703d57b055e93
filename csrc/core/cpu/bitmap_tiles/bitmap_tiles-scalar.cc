// The tiled bitmap layout on the CPU: exact conversions from and to the bitmap format, the dense
// expansion, and the walk of the CUDA kernels' decode (see prunekit/bitmap_tiles_cpu.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "../sparse_linear/activation.h"
#include "prunekit/bitmap_tiles_cpu.h"
#include "prunekit/half.h"

namespace prunekit::cpu {
namespace {

using tiles::kTileCols;
using tiles::kTileRows;
using tiles::kTileWords;
using tiles::kWarp;

char* element(void* base, int64_t index, int bytes) { return static_cast<char*>(base) + index * bytes; }
const char* element(const void* base, int64_t index, int bytes) {
  return static_cast<const char*>(base) + index * bytes;
}

int tile_marks(const TilesView& view, int64_t tile) {
  int marks = 0;
  for (int r = 0; r < kTileRows; ++r) marks += tiles::tile_row_marks(view.tile_bitmap, tile, r);
  return marks;
}

float to_float(const void* values, ScoreType type, int64_t index) {
  switch (type) {
    case ScoreType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(values)[index]);
    case ScoreType::kFloat16: return fp16_to_float(static_cast<const uint16_t*>(values)[index]);
    default: return static_cast<const float*>(values)[index];
  }
}

// The 32 lanes' word pairs of tile t and the exclusive scan of their popcounts (the warp's view).
struct WarpTile {
  uint32_t pair[kWarp];
  uint32_t start[kWarp];
  int64_t marks;
};

WarpTile warp_tile(const TilesView& view, int64_t tile) {
  WarpTile warp{};
  uint32_t running = 0;
  for (int lane = 0; lane < kWarp; ++lane) {
    const uint16_t* words = view.tile_bitmap + tile * tiles::kTileWordCount + 2 * lane;
    warp.pair[lane] = uint32_t(words[0]) | (uint32_t(words[1]) << 16);
    warp.start[lane] = running;
    running += uint32_t(tiles::popcount32(warp.pair[lane]));
  }
  warp.marks = running;
  return warp;
}

}  // namespace

void bitmap_tiles_marks_scalar(const BitmapSource& src, int64_t* marks, RowRange panels) {
  const tiles::Grid& grid = src.grid;
  for (int64_t p = panels.begin; p < panels.end; ++p) {
    for (int64_t c = 0; c < grid.chunks; ++c) marks[p * grid.chunks + c] = 0;
    for (int r = 0; r < kTileRows && p * kTileRows + r < grid.rows; ++r) {
      for (int64_t c = 0; c < grid.chunks; ++c) {
        marks[p * grid.chunks + c] += tiles::row_chunk_marks(src.bitmap, grid.words, p * kTileRows + r, c);
      }
    }
  }
}

void bitmap_tiles_pack_scalar(const BitmapSource& src, const int64_t* tile_offsets, void* tile_values,
                              uint16_t* tile_bitmap, RowRange panels) {
  const tiles::Grid& grid = src.grid;
  const int bytes = src.element_bytes;
  std::vector<int64_t> fill(grid.chunks);
  for (int64_t p = panels.begin; p < panels.end; ++p) {
    for (int64_t c = 0; c < grid.chunks; ++c) fill[c] = tile_offsets[p * grid.chunks + c];
    for (int r = 0; r < kTileRows; ++r) {
      const int64_t row = p * kTileRows + r;
      int64_t from = row < grid.rows ? src.row_offsets[row] : 0;
      for (int64_t c = 0; c < grid.chunks; ++c) {
        const int64_t tile = p * grid.chunks + c;
        for (int w = 0; w < kTileWords; ++w) {
          const int64_t word = c * kTileWords + w;
          tile_bitmap[tiles::tile_word_index(tile, r, w)] =
              row < grid.rows && word < grid.words ? src.bitmap[row * grid.words + word] : 0;
        }
        if (row >= grid.rows) continue;
        const int marks = tiles::row_chunk_marks(src.bitmap, grid.words, row, c);
        std::memcpy(element(tile_values, fill[c], bytes), element(src.values, from, bytes), size_t(marks) * bytes);
        fill[c] += marks;
        from += marks;
      }
    }
    for (int64_t c = 0; c < grid.chunks; ++c) {
      const int64_t end = tile_offsets[p * grid.chunks + c + 1];
      std::memset(element(tile_values, fill[c], bytes), 0, size_t(end - fill[c]) * bytes);
    }
  }
}

Status bitmap_tiles_validate_scalar(const TilesView& view, RowRange panels) {
  const tiles::Grid& grid = view.grid;
  for (int64_t p = panels.begin; p < panels.end; ++p) {
    for (int64_t c = 0; c < grid.chunks; ++c) {
      const int64_t tile = p * grid.chunks + c;
      bool ok =
          tiles::run_fits(view.tile_offsets[tile], view.tile_offsets[tile + 1], tile_marks(view, tile), view.size);
      for (int r = 0; r < kTileRows && ok; ++r) {
        const bool padding_row = p * kTileRows + r >= grid.rows;
        for (int w = 0; w < kTileWords; ++w) {
          const uint32_t allowed = padding_row ? 0u : tiles::word_limit_bits(c * kTileWords + w, grid.cols);
          ok = ok && (view.tile_bitmap[tiles::tile_word_index(tile, r, w)] & ~allowed) == 0;
        }
      }
      if (!ok) return Status{StatusCode::kCorruptMeta, p, c};
    }
  }
  return Status{};
}

void bitmap_tiles_row_marks_scalar(const TilesView& view, int64_t* row_marks, RowRange panels) {
  const tiles::Grid& grid = view.grid;
  for (int64_t p = panels.begin; p < panels.end; ++p) {
    for (int r = 0; r < kTileRows && p * kTileRows + r < grid.rows; ++r) {
      int64_t marks = 0;
      for (int64_t c = 0; c < grid.chunks; ++c)
        marks += tiles::tile_row_marks(view.tile_bitmap, p * grid.chunks + c, r);
      row_marks[p * kTileRows + r] = marks;
    }
  }
}

void bitmap_tiles_unpack_scalar(const TilesView& view, const int64_t* row_offsets, void* values, uint16_t* bitmap,
                                RowRange panels) {
  const tiles::Grid& grid = view.grid;
  const int bytes = view.element_bytes;
  std::vector<int64_t> fill(grid.chunks);
  for (int64_t p = panels.begin; p < panels.end; ++p) {
    for (int64_t c = 0; c < grid.chunks; ++c) fill[c] = view.tile_offsets[p * grid.chunks + c];
    for (int r = 0; r < kTileRows && p * kTileRows + r < grid.rows; ++r) {
      const int64_t row = p * kTileRows + r;
      int64_t to = row_offsets[row];
      for (int64_t c = 0; c < grid.chunks; ++c) {
        const int64_t tile = p * grid.chunks + c;
        for (int w = 0; w < kTileWords && c * kTileWords + w < grid.words; ++w) {
          bitmap[row * grid.words + c * kTileWords + w] = view.tile_bitmap[tiles::tile_word_index(tile, r, w)];
        }
        const int marks = tiles::tile_row_marks(view.tile_bitmap, tile, r);
        std::memcpy(element(values, to, bytes), element(view.values, fill[c], bytes), size_t(marks) * bytes);
        fill[c] += marks;
        to += marks;
      }
    }
  }
}

void bitmap_tiles_dense_scalar(const TilesView& view, void* dense, RowRange panels) {
  const tiles::Grid& grid = view.grid;
  const int bytes = view.element_bytes;
  for (int64_t p = panels.begin; p < panels.end; ++p) {
    const int64_t rows_here = grid.rows - p * kTileRows < kTileRows ? grid.rows - p * kTileRows : kTileRows;
    std::memset(element(dense, p * kTileRows * grid.cols, bytes), 0, size_t(rows_here * grid.cols) * bytes);
    for (int64_t c = 0; c < grid.chunks; ++c) {
      const int64_t tile = p * grid.chunks + c;
      int64_t from = view.tile_offsets[tile];
      for (int r = 0; r < rows_here; ++r) {
        for (int w = 0; w < kTileWords; ++w) {
          for (uint32_t word = view.tile_bitmap[tiles::tile_word_index(tile, r, w)]; word; word &= word - 1) {
            const int64_t col = c * kTileCols + 16 * w + __builtin_ctz(word);
            std::memcpy(element(dense, (p * kTileRows + r) * grid.cols + col, bytes),
                        element(view.values, from++, bytes), bytes);
          }
        }
      }
    }
  }
}

Status bitmap_tiles_linear_scalar(const TilesView& view, ScoreType value_type, const TilesOperands& op, TilesWalk walk,
                                  RowRange panels) {
  const tiles::Grid& grid = view.grid;
  if (walk == TilesWalk::kMma && view.element_bytes != 2) return Status{StatusCode::kBadArgument, 0, 0};
  const int64_t batch = op.batch;
  std::vector<float> acc(size_t(kTileRows) * batch);
  const auto x_at = [&](int64_t n, int64_t k) { return op.x[n * op.x_stride_n + k * op.x_stride_k]; };
  for (int64_t p = panels.begin; p < panels.end; ++p) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t c = 0; c < grid.chunks; ++c) {
      const int64_t tile = p * grid.chunks + c;
      const WarpTile warp = warp_tile(view, tile);
      const int64_t begin = view.tile_offsets[tile];
      if (!tiles::run_fits(begin, view.tile_offsets[tile + 1], warp.marks, view.size)) {
        return Status{StatusCode::kCorruptMeta, p, c};
      }
      // Columns past the weight are unmarked in a valid tile; x is never read there.
      const auto x_or_zero = [&](int64_t n, int64_t col) { return col < grid.cols ? x_at(n, col) : 0.0f; };
      if (walk == TilesWalk::kSimt) {
        for (int lane = 0; lane < kWarp; ++lane) {
          int64_t at = begin + warp.start[lane];
          const int r = tiles::pair_row(lane);
          for (uint32_t bits = warp.pair[lane]; bits; bits &= bits - 1) {
            const int64_t col = c * kTileCols + tiles::pair_col(lane) + __builtin_ctz(bits);
            const float v = to_float(view.values, value_type, at++);
            for (int64_t n = 0; n < batch; ++n) acc[r * batch + n] += v * x_or_zero(n, col);
          }
        }
        continue;
      }
      // The A fragment of each k-step as the lanes build it: words (with their run positions)
      // shuffled from their owner lanes, then two elements per register from the run.
      const uint16_t* run = static_cast<const uint16_t*>(view.values) + begin;
      for (int step = 0; step < kTileWords; ++step) {
        uint32_t a[kTileRows][16];  // element bits (16-bit) of the step's 16 x 16 A, by row and column
        for (int lane = 0; lane < kWarp; ++lane) {
          const int half = step & 1;
          const int g = tiles::frag_group(lane);
          const uint32_t low_rows =
              tiles::packed_word(warp.pair[tiles::word_owner(g, step)], warp.start[tiles::word_owner(g, step)], half);
          const uint32_t high_rows = tiles::packed_word(warp.pair[tiles::word_owner(g + 8, step)],
                                                        warp.start[tiles::word_owner(g + 8, step)], half);
          for (int reg = 0; reg < 4; ++reg) {
            const int col = tiles::a_frag_col(lane, reg);
            const uint32_t bits = tiles::pair_bits([&](uint32_t i) { return run[i]; },
                                                   tiles::pair_position(reg & 1 ? high_rows : low_rows, col));
            a[tiles::a_frag_row(lane, reg)][col] = bits & 0xffffu;
            a[tiles::a_frag_row(lane, reg)][col + 1] = bits >> 16;
          }
        }
        // Every element multiplies, zeros included, as on tensor cores (an inf in x at an unmarked
        // column gives NaN there, as dense F.linear does).
        for (int r = 0; r < kTileRows; ++r) {
          for (int col = 0; col < 16; ++col) {
            const uint16_t bits = uint16_t(a[r][col]);
            const float v = value_type == ScoreType::kBFloat16 ? bf16_to_float(bits) : fp16_to_float(bits);
            const int64_t k = c * kTileCols + 16 * step + col;
            for (int64_t n = 0; n < batch; ++n) acc[r * batch + n] += v * x_or_zero(n, k);
          }
        }
      }
    }
    for (int r = 0; r < kTileRows && p * kTileRows + r < grid.rows; ++r) {
      const int64_t m = p * kTileRows + r;
      const float b = op.bias ? op.bias[m] : 0.0f;
      for (int64_t n = 0; n < batch; ++n) {
        op.y[n * op.y_stride_n + m * op.y_stride_m] = activate_scalar(acc[r * batch + n] + b, op.activation);
      }
    }
  }
  return Status{};
}

}  // namespace prunekit::cpu
