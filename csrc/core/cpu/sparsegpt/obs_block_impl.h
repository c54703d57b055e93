// SparseGPT's in-block OBS column updates, written once and compiled per ISA (the variant .cc
// files define PRUNEKIT_VECTOR_BYTES, the register width, and include this with their own target
// flags). Vectors use GCC/Clang vector extensions: one register per Vec on every ISA.
// Everything here has internal linkage so that variants built with different flags never mix.
#pragma once

#include <cstdint>
#include <cstring>

#include "prunekit/kernels_cpu.h"
#include "prunekit/vector_ext.h"

namespace prunekit::cpu {
namespace {

// Rows per tile: one row per lane in the sequential part.
constexpr int64_t kTileRows = kLanes;
// Columns updated one by one before their errors reach the rest of the block in a rank update.
constexpr int64_t kSubBlock = 16;
constexpr int64_t kMaxSubBlock = 64;  // a sub-block holds whole N:M groups (m <= 64)
// Rows per accumulator group in the rank update (4 vectors of accumulators: no spills on AVX2).
constexpr int64_t kUpdateRows = 4;

// Keeps, per lane (row), the n largest (w_c / d_c)^2 of the m columns starting at `col`
// (ties: lower column), as 0/1 flags in keep[c].
inline void select_nm(const Vec* col, const float* hinv, int64_t ldh, int64_t m, int64_t n, Vec* keep) {
  Vec score[kMaxSubBlock];
  for (int64_t c = 0; c < m; ++c) {
    const Vec scaled = col[c] / hinv[c * ldh + c];
    score[c] = scaled * scaled;
  }
  for (int64_t c = 0; c < m; ++c) {
    Vec rank{};
    for (int64_t t = 0; t < m; ++t) {
      if (t == c) continue;
      // Comparisons yield -1 (true) or 0 per lane; subtracting counts the wins.
      rank -= t < c ? __builtin_convertvector(score[t] >= score[c], Vec)
                    : __builtin_convertvector(score[t] > score[c], Vec);
    }
    keep[c] = __builtin_convertvector(rank < float(n), Vec) * -1.0f;
  }
}

// w[r][j] -= sum_t e[r][t] * h[t][j] for j in [j_begin, j_end); t increases, so the arithmetic
// follows the column-by-column order.
inline void rank_update(float* const* wr, int64_t rows, const float* const* er, const float* h, int64_t ldh,
                        int64_t depth, int64_t j_begin, int64_t j_end) {
  for (int64_t r0 = 0; r0 < rows; r0 += kUpdateRows) {
    const int64_t group = rows - r0 < kUpdateRows ? rows - r0 : kUpdateRows;
    int64_t j = j_begin;
    if (group == kUpdateRows) {
      for (; j + kLanes <= j_end; j += kLanes) {
        Vec acc0 = load_vec(wr[r0] + j), acc1 = load_vec(wr[r0 + 1] + j);
        Vec acc2 = load_vec(wr[r0 + 2] + j), acc3 = load_vec(wr[r0 + 3] + j);
        for (int64_t t = 0; t < depth; ++t) {
          const Vec hv = load_vec(h + t * ldh + j);
          acc0 -= er[r0][t] * hv;
          acc1 -= er[r0 + 1][t] * hv;
          acc2 -= er[r0 + 2][t] * hv;
          acc3 -= er[r0 + 3][t] * hv;
        }
        store_vec(wr[r0] + j, acc0);
        store_vec(wr[r0 + 1] + j, acc1);
        store_vec(wr[r0 + 2] + j, acc2);
        store_vec(wr[r0 + 3] + j, acc3);
      }
    }
    for (int64_t r = r0; r < r0 + group; ++r) {
      for (int64_t jj = j; jj < j_end; ++jj) {
        float acc = wr[r][jj];
        for (int64_t t = 0; t < depth; ++t) acc -= er[r][t] * h[t * ldh + jj];
        wr[r][jj] = acc;
      }
    }
  }
}

inline void obs_block_update_impl(float* w, int64_t ldw, const float* hinv, int64_t ldh, int64_t cols, float* err,
                                  bool* keep, int64_t n, int64_t m, int64_t row_begin, int64_t row_end) {
  const int64_t sub = m > 0 ? m * (m < kSubBlock ? kSubBlock / m : 1) : kSubBlock;
  Vec col[kMaxSubBlock], keep_flags[kMaxSubBlock];
  for (int64_t tile = row_begin; tile < row_end; tile += kTileRows) {
    const int64_t rows = row_end - tile < kTileRows ? row_end - tile : kTileRows;
    float* wr[kTileRows];
    float* er_rows[kTileRows];
    const float* er_sub[kTileRows];
    for (int64_t r = 0; r < rows; ++r) {
      wr[r] = w + (tile + r) * ldw;
      er_rows[r] = err + (tile + r) * cols;
    }
    for (int64_t s0 = 0; s0 < cols; s0 += sub) {
      const int64_t s1 = s0 + sub < cols ? s0 + sub : cols, width = s1 - s0;
      // Transpose the tile's sub-block into column vectors (lane = row); absent rows stay 0.
      for (int64_t c = 0; c < width; ++c) {
        col[c] = Vec{};
        keep_flags[c] = Vec{};
        for (int64_t r = 0; r < rows; ++r) {
          col[c][r] = wr[r][s0 + c];
          if (m == 0) keep_flags[c][r] = keep[(tile + r) * cols + s0 + c] ? 1.0f : 0.0f;
        }
      }
      for (int64_t i = 0; i < width; ++i) {
        const float* hrow = hinv + (s0 + i) * ldh + s0;
        if (m > 0 && i % m == 0) select_nm(col + i, hinv + (s0 + i) * ldh + s0 + i, ldh, m, n, keep_flags + i);
        const Vec kept = keep_flags[i] != 0.0f ? col[i] : Vec{};
        const Vec e = (col[i] - kept) / hrow[i];
        col[i] = kept;
        for (int64_t j = i + 1; j < width; ++j) col[j] -= e * hrow[j];
        for (int64_t r = 0; r < rows; ++r) er_rows[r][s0 + i] = e[r];
      }
      for (int64_t c = 0; c < width; ++c) {
        for (int64_t r = 0; r < rows; ++r) {
          wr[r][s0 + c] = col[c][r];
          if (m > 0) keep[(tile + r) * cols + s0 + c] = keep_flags[c][r] != 0.0f;
        }
      }
      if (s1 < cols) {
        for (int64_t r = 0; r < rows; ++r) er_sub[r] = er_rows[r] + s0;
        rank_update(wr, rows, er_sub, hinv + s0 * ldh, ldh, width, s1, cols);
      }
    }
  }
}

}  // namespace
}  // namespace prunekit::cpu
