// The tiled bitmap layout: the GPU layout of an unstructured weight, converted exactly from and to
// the bitmap format (prunekit/kernels_cpu.h). Torch-free; the index math is host+device so that the
// CPU conversions and the CPU walk of the CUDA kernels' decode (csrc/core/cpu/bitmap_tiles) run the
// same functions as the CUDA kernels.
//
// A (rows, cols) weight is cut into tiles of 16 rows x 64 columns: panel p holds rows 16p..16p+15,
// chunk c columns 64c..64c+63; rows and columns past the weight are unmarked padding. Tile
// t = p * chunks + c is a small bitmap-format matrix:
//   tile_bitmap (panels, chunks, 16, 4) int16: word w of row r of tile t is the bitmap format's
//     word 4c + w of row 16p + r (bit b marks column 64c + 16w + b), so a tile's 64 words are 128
//     contiguous bytes that one warp loads as 32 pairs;
//   tile_values: each tile's nonzeros packed row by row in column order (the bitmap format's order
//     within the tile), starting at tile_offsets[t], a multiple of kRunAlign elements, and
//     zero-padded to the next multiple (so runs can be copied in 16-byte units);
//   tile_offsets (tiles + 1) int64: tile_offsets[t + 1] - tile_offsets[t] == run_length(marks of
//     tile t), tile_offsets[0] == 0, the last entry the size of tile_values.
// A warp starts at any tile: the scan of its 32 lanes' popcounts gives each word's place in the run.
// Bytes per weight: (1 - s) * b + 1/8 + about 3.5 * b / 1024 (run padding) + 8 / 1024 (offsets).
#pragma once

#include <cstdint>

#ifndef PRUNEKIT_HD
#if defined(__CUDACC__)
#define PRUNEKIT_HD __host__ __device__ __forceinline__
#else
#define PRUNEKIT_HD inline
#endif
#endif

namespace prunekit::tiles {

constexpr int kTileRows = 16;                           // a panel: the M of one m16n8k16 fragment
constexpr int kTileWords = 4;                           // 16-bit words per tile row
constexpr int kTileCols = 16 * kTileWords;              // 64
constexpr int kTileWordCount = kTileRows * kTileWords;  // 64 words, 128 bytes
constexpr int kTileMaxValues = kTileRows * kTileCols;   // 1024
constexpr int kRunAlign = 8;                            // 16 bytes of fp16/bf16
constexpr int kWarp = 32;

PRUNEKIT_HD int popcount32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}

// The tile grid of a (rows, cols) weight.
struct Grid {
  int64_t rows;
  int64_t cols;
  int64_t panels;  // ceil(rows / 16)
  int64_t chunks;  // ceil(cols / 64)
  int64_t words;   // ceil(cols / 16): words per row of the bitmap format
};

PRUNEKIT_HD Grid tile_grid(int64_t rows, int64_t cols) {
  return Grid{rows, cols, (rows + kTileRows - 1) / kTileRows, (cols + kTileCols - 1) / kTileCols, (cols + 15) / 16};
}

PRUNEKIT_HD int64_t run_length(int64_t marks) { return (marks + kRunAlign - 1) / kRunAlign * kRunAlign; }

// The bits of word `w` (bitmap-format word index) that may be set in a row of `cols` columns:
// none for words past the row, those below cols for its last word.
PRUNEKIT_HD uint32_t word_limit_bits(int64_t w, int64_t cols) {
  const int64_t first = 16 * w;
  if (first >= cols) return 0;
  return cols - first >= 16 ? 0xffffu : (1u << (cols - first)) - 1;
}

// Position in tile_bitmap of word w of row r of tile t.
PRUNEKIT_HD int64_t tile_word_index(int64_t tile, int r, int w) { return tile * kTileWordCount + r * kTileWords + w; }

// Marks of row `row` of the bitmap format (`words` per row) in chunk `chunk`.
PRUNEKIT_HD int row_chunk_marks(const uint16_t* bitmap, int64_t words, int64_t row, int64_t chunk) {
  int marks = 0;
  for (int w = 0; w < kTileWords; ++w) {
    const int64_t word = chunk * kTileWords + w;
    if (word < words) marks += popcount32(bitmap[row * words + word]);
  }
  return marks;
}

// Marks of row r of tile t in tile_bitmap.
PRUNEKIT_HD int tile_row_marks(const uint16_t* tile_bitmap, int64_t tile, int r) {
  int marks = 0;
  for (int w = 0; w < kTileWords; ++w) marks += popcount32(tile_bitmap[tile_word_index(tile, r, w)]);
  return marks;
}

// Whether a tile's run [begin, end) fits its marks and the values buffer (`size` elements): what the
// kernels check before they read a run (a corrupt one never leads them out of their buffers).
PRUNEKIT_HD bool run_fits(int64_t begin, int64_t end, int64_t marks, int64_t size) {
  return begin >= 0 && begin % kRunAlign == 0 && end <= size && end - begin == run_length(marks);
}

// ---- A warp's view of one tile ----
// Lane l loads the 32-bit pair of words 2l, 2l+1 of the tile (row l / 2, words 2(l & 1) and
// 2(l & 1) + 1: the low half is the first), i.e. columns pair_col(l) .. pair_col(l) + 31 of row
// pair_row(l). The lanes' pairs in lane order are the tile's words in run order, so an exclusive
// scan of their popcounts gives each pair's first value in the run.
PRUNEKIT_HD int pair_row(int lane) { return lane >> 1; }
PRUNEKIT_HD int pair_col(int lane) { return (lane & 1) * 32; }

// One word with the run position of its first marked column: word | position << 16 (positions
// are below kTileMaxValues, so they fit). `half` 0 is the pair's low word.
PRUNEKIT_HD uint32_t packed_word(uint32_t pair, uint32_t pair_start, int half) {
  const uint32_t low = pair & 0xffffu;
  return half ? (pair >> 16) | ((pair_start + uint32_t(popcount32(low))) << 16) : low | (pair_start << 16);
}

// The lane holding word w of tile row r (as its half w & 1).
PRUNEKIT_HD int word_owner(int r, int w) { return 2 * r + (w >> 1); }

// ---- mma.m16n8k16 fragments (PTX ISA, row-major A, column-major B, fp32 C) ----
// Lane l is in group g = l / 4 with index t = l % 4 in it.
// A (16 x 16): register i (0..3) holds two elements, row g + 8 (i & 1), columns c, c + 1 with
// c = 2t + 8 (i >> 1), the lower column in the low half.
PRUNEKIT_HD int frag_group(int lane) { return lane >> 2; }
PRUNEKIT_HD int frag_index(int lane) { return lane & 3; }
PRUNEKIT_HD int a_frag_row(int lane, int reg) { return frag_group(lane) + 8 * (reg & 1); }
PRUNEKIT_HD int a_frag_col(int lane, int reg) { return 2 * frag_index(lane) + 8 * (reg >> 1); }
// B (16 x 8): register i (0..1) holds rows (k) 2t + 8i and 2t + 8i + 1 of column (n) g.
PRUNEKIT_HD int b_frag_k(int lane, int reg) { return 2 * frag_index(lane) + 8 * reg; }
PRUNEKIT_HD int b_frag_n(int lane) { return frag_group(lane); }
// C (16 x 8): element i (0..3) is row g + 8 (i >> 1), column 2t + (i & 1).
PRUNEKIT_HD int c_frag_row(int lane, int i) { return frag_group(lane) + 8 * (i >> 1); }
PRUNEKIT_HD int c_frag_col(int lane, int i) { return 2 * frag_index(lane) + (i & 1); }

// Columns c and c + 1 (c even, < 16) of a packed word: which are marked (bit 0: c, bit 1: c + 1)
// and the run position of the first marked one (of c + 1 when only it is).
struct PairPosition {
  uint32_t marked;
  uint32_t index;
};
PRUNEKIT_HD PairPosition pair_position(uint32_t packed, int c) {
  const uint32_t word = packed & 0xffffu;
  return PairPosition{(word >> c) & 3u, (packed >> 16) + uint32_t(popcount32(word & ((1u << c) - 1u)))};
}

// The two 16-bit elements of a pair as one 32-bit fragment register (zeros where unmarked):
// what each A register of the MMA kernels holds. `load(i)` reads element i of the tile's run.
template <typename Load>
PRUNEKIT_HD uint32_t pair_bits(Load load, PairPosition at) {
  const uint32_t low = (at.marked & 1u) ? uint32_t(load(at.index)) : 0u;
  const uint32_t high = (at.marked & 2u) ? uint32_t(load(at.index + (at.marked & 1u))) : 0u;
  return low | (high << 16);
}

// ---- Launch plans of the CUDA kernels (host code; here so the CPU tests check them) ----
// The decode kernels (batch <= 16 per launch): blocks of 8 warps over `panels_per_block` panels
// (8 / panels_per_block warps share a panel's chunks and add up in shared memory), the chunks cut
// into `splits` ranges of `chunks_per_split` (one block each; partial sums added by the last block
// of a panel group). The SIMT kernel stages its chunks of x in shared memory as fp32, at most
// kDecodeXBytes. Sizes aim at about four blocks per SM; not yet tuned on a GPU.
constexpr int kDecodeWarps = 8;
constexpr int64_t kDecodeXBytes = 32768;
// Floats between staged columns of x in the SIMT kernel: a column of 8 or 16 slots is padded by 4
// so that the lanes' 16-byte loads of random columns start in 8 bank quads instead of 4 or 2.
PRUNEKIT_HD constexpr int simt_x_stride(int slots) { return slots >= 8 ? slots + 4 : slots; }
struct DecodePlan {
  int panels_per_block;
  int64_t groups;  // blocks along the panels
  int64_t chunks_per_split;
  int64_t splits;
};
inline DecodePlan decode_plan(const Grid& grid, int batch_slots, bool simt, int sms) {
  int per_block = batch_slots >= 8 ? 4 : 2;  // more panels share each chunk of x as it grows
  while (per_block > 1 && per_block > grid.panels) per_block /= 2;
  const int64_t groups = (grid.panels + per_block - 1) / per_block;
  const int64_t warps_per_panel = kDecodeWarps / per_block;
  const int64_t target_blocks = 4 * int64_t(sms > 0 ? sms : 1);
  int64_t splits = (target_blocks + groups - 1) / groups;
  splits = splits < 1 ? 1 : (splits > grid.chunks ? grid.chunks : splits);
  int64_t per_split = (grid.chunks + splits - 1) / splits;
  if (per_split < warps_per_panel) per_split = warps_per_panel < grid.chunks ? warps_per_panel : grid.chunks;
  if (simt) {
    const int64_t most = kDecodeXBytes / (int64_t(kTileCols) * simt_x_stride(batch_slots) * 4);
    if (per_split > most) per_split = most;
  }
  return DecodePlan{per_block, groups, per_split, (grid.chunks + per_split - 1) / per_split};
}

// The pipelined MMA GEMM (larger batches, 1x1 convolution): blocks of 4 warps, 128 rows (two
// panels a warp) x 64 columns of the batch; the chunks split over blocks only for a single image
// whose tiles give fewer than two blocks per SM.
constexpr int kGemmWarps = 4;
constexpr int kGemmPanelsPerWarp = 2;
constexpr int kGemmRows = kGemmWarps * kGemmPanelsPerWarp * kTileRows;  // 128
constexpr int kGemmCols = 64;
struct GemmPlan {
  int64_t blocks_m;
  int64_t blocks_n;
  int64_t chunks_per_split;
  int64_t splits;
};
inline GemmPlan gemm_plan(const Grid& grid, int64_t batch, int64_t images, int sms) {
  const int64_t blocks_m = (grid.rows + kGemmRows - 1) / kGemmRows;
  const int64_t blocks_n = (batch + kGemmCols - 1) / kGemmCols;
  int64_t splits = 1;
  const int64_t blocks = blocks_m * blocks_n;
  if (images == 1 && blocks < 2 * int64_t(sms)) {
    const int64_t most = grid.chunks / 4 > 1 ? grid.chunks / 4 : 1;  // at least 4 chunks a split
    splits = (2 * int64_t(sms) + blocks - 1) / blocks;
    splits = splits > most ? most : splits;
  }
  const int64_t per_split = (grid.chunks + splits - 1) / splits;
  return GemmPlan{blocks_m, blocks_n, per_split, (grid.chunks + per_split - 1) / per_split};
}

}  // namespace prunekit::tiles
