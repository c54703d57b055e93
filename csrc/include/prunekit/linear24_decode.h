// Bookkeeping of the small-batch 2:4 kernel (linear24_decode, csrc/core/cuda/linear24_mma_sm80.cu),
// host and device, so that the CPU tests cover it (tests/core/test_core_linear24_decode.cc
// emulates a warp with it).
//
// The kernel computes y = x W^T for 1-16 rows of x with dense mma.sync.m16n8k16 (A = W rows,
// B = x^T, fp32 accumulators), building A's fragments from the compressed weight in registers:
// a group's two values (one 32-bit word of `values`) are spread over its four columns by two byte
// permutes whose selectors come from the group's 4-bit code. The 16 K slots of an mma may hold any
// 16 columns as long as A and B agree, so each lane takes whole groups: in a chunk of 64 columns,
// lane quad t (lane % 4) owns groups 4t..4t+3, i.e. 8 consecutive values (one 16-byte load per
// row), one meta element per row (column 4*chunk + t), and 16 consecutive entries of x per batch
// row (two 16-byte loads). k-step s of the chunk uses group 4t+s:
//   A slots 2t, 2t+1 <- group columns 0, 1     A slots 2t+8, 2t+9 <- group columns 2, 3
//   B slots 2t, 2t+1 <- x at those columns      B slots 2t+8, 2t+9 <- x at those columns
// mma's fragment layout: A (16x16) a0,a1 at (row g, slots 2t, 2t+1), a2,a3 at row g+8, a4..a7 the
// same rows at slots +8; B (16x8) b0,b1 at (slots 2t, 2t+1, column g), b2,b3 at slots +8; C (16x8)
// c0,c1 at (row g, columns 2t, 2t+1), c2,c3 at row g+8; g = lane / 4, t = lane % 4.
#pragma once

#include <cstdint>

#include "prunekit/format24.h"

namespace prunekit::linear24 {

constexpr int kWarpRows = 32;    // output rows of a block: two m16 tiles per warp
constexpr int kChunkCols = 64;   // dense columns of one step of a warp
constexpr int kBlockWarps = 16;  // warps of a block, splitting the chunks of its rows
constexpr int kMaxBatch = 16;    // two n8 tiles

PRUNEKIT_HD int lane_row(int lane) { return lane >> 2; }  // g: A/C row, B column in a tile
PRUNEKIT_HD int lane_quad(int lane) { return lane & 3; }  // t

// Row within the block's 32 of the lane's A rows: m16 tile m (0, 1), upper half h (rows g+8).
PRUNEKIT_HD int a_row(int lane, int m, int h) { return 16 * m + 8 * h + lane_row(lane); }

// First dense column (of the whole matrix) of the lane's 16 in chunk `chunk`, and whether the
// chunk has them (k % 64 == 32 leaves lanes t = 2, 3 of the last chunk without columns).
PRUNEKIT_HD int64_t lane_first_col(int lane, int64_t chunk) { return chunk * kChunkCols + 16 * lane_quad(lane); }
PRUNEKIT_HD bool lane_has_cols(int lane, int64_t chunk, int64_t k) { return lane_first_col(lane, chunk) < k; }

// Offset (in elements) of the lane's 8 values of `row` in the (rows, k/2) values, and of its meta
// element in the reordered (rows, k/16) int16 meta.
PRUNEKIT_HD int64_t lane_values_offset(int lane, int64_t row, int64_t chunk, int64_t k) {
  return row * (k / 2) + lane_first_col(lane, chunk) / 2;
}
PRUNEKIT_HD int64_t lane_meta_offset(int lane, int64_t row, int64_t chunk, int64_t rows) {
  return format24::meta_offset(row, lane_first_col(lane, chunk) / 16, rows, format24::layout_for_element_bytes(2));
}

// Byte-permute selectors spreading a group's value word (v0 in the low half, v1 in the high half)
// over its four 16-bit columns: the low 16 bits select columns 0, 1, the high 16 bits columns 2, 3.
// Column idx0 gets v0, column idx1 gets v1, the others zero (bytes 4, 5 of the zero second
// operand). Codes that are not a valid pair (idx0 >= idx1, corrupt metadata) give some
// arrangement of v0, v1 and zeros: wrong numbers, never an out-of-range access.
PRUNEKIT_HD uint32_t expand_selectors(uint32_t code) {
  const uint32_t idx0 = code & 3u, idx1 = (code >> 2) & 3u;
  uint32_t selectors = 0;
  for (uint32_t col = 0; col < 4; ++col) {
    const uint32_t low_byte = col == idx1 ? 2u : col == idx0 ? 0u : 4u;
    const uint32_t half = low_byte | ((low_byte + 1u) << 4);  // byte selectors of one 16-bit column
    selectors |= half << (8 * (col & 1u) + 16 * (col >> 1));
  }
  return selectors;
}

// __byte_perm(x, y, s) in its default mode: byte i of the result is byte s[4i+2:4i] of y:x.
PRUNEKIT_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);
#else
  const uint64_t both = (uint64_t(y) << 32) | x;
  uint32_t result = 0;
  for (int i = 0; i < 4; ++i) result |= uint32_t((both >> (8 * ((s >> (4 * i)) & 7u))) & 0xFFu) << (8 * i);
  return result;
#endif
}

// A's four registers for k-step s from the two rows' value words (group 4t+s) and codes:
// {row g cols 0,1; row g+8 cols 0,1; row g cols 2,3; row g+8 cols 2,3} as a0..a7 expect.
PRUNEKIT_HD void a_fragment(uint32_t values_g, uint32_t selectors_g, uint32_t values_g8, uint32_t selectors_g8,
                            uint32_t a[4]) {
  a[0] = byte_perm(values_g, 0u, selectors_g);
  a[1] = byte_perm(values_g8, 0u, selectors_g8);
  a[2] = byte_perm(values_g, 0u, selectors_g >> 16);
  a[3] = byte_perm(values_g8, 0u, selectors_g8 >> 16);
}

// The block's rows and the chunks each of its warps takes: warp w of a block takes chunks
// w, w + kBlockWarps, ... of the row tile (every chunk of k once per block).
PRUNEKIT_HD int64_t chunk_count(int64_t k) { return (k + kChunkCols - 1) / kChunkCols; }
PRUNEKIT_HD int64_t row_tiles(int64_t rows) { return rows / kWarpRows; }

}  // namespace prunekit::linear24
