// The SpMM (batched sparse linear, 1x1 convolution) of the bitmap and CSR16 formats, written once
// on GCC/Clang vector extensions and compiled per ISA: the variant .cc files define
// PRUNEKIT_VECTOR_BYTES (the register width) and include this with their own target flags.
// Everything here has internal linkage so that variants built with different flags never mix.
// (AVX-512 has its own, spmm_avx512_impl.h: it decodes with vector compress and masks its partial
// vectors.) A format supplies a RowSource, as there: each row's nonzeros of one k-block.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activation.h"
#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"
#include "prunekit/vector_ext.h"

namespace prunekit::cpu {
namespace {

// Vectors per sweep: 4 columns' worth of accumulators, twice (two nonzeros in flight).
constexpr int kTileVectors = 4;

inline Vec activate_vec(Vec v, Activation activation) {
  if (activation == Activation::kNone) return v;
  const Vec zero{};
  // Written so that NaN passes through, as in F.relu / F.relu6 (a NaN compares false).
  v = v < zero ? zero : v;
  if (activation == Activation::kRelu6) {
    const Vec six = zero + 6.0f;
    v = v > six ? six : v;
  }
  return v;
}

// Positions of the set bits of each byte value, in order (padded with zeros): the decode copies
// all eight and advances by the popcount, so it has no data-dependent branch.
struct BytePositions {
  uint8_t at[256][8];
  constexpr BytePositions() : at() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int bit = 0; bit < 8; ++bit)
        if (m & (1 << bit)) at[m][n++] = uint8_t(bit);
    }
  }
};
constexpr BytePositions kBytePositions{};

// Columns of the set bits of bitmap words [w0, w1) of one row; returns their count. `column`
// needs 8 entries of slack past the count (whole groups of eight are stored).
inline int64_t decode_block(const uint16_t* bm, int64_t w0, int64_t w1, int32_t* column) {
  int64_t nnz = 0;
  for (int64_t w = w0; w < w1; ++w) {
    for (int half = 0; half < 2; ++half) {
      const unsigned byte = (bm[w] >> (8 * half)) & 0xffu;
      const int32_t base = int32_t(w * kBitmapWordBits + 8 * half);
      for (int i = 0; i < 8; ++i) column[nnz + i] = base + kBytePositions.at[byte][i];
      nnz += __builtin_popcount(byte);
    }
  }
  return nnz;
}

typedef int32_t LaneIndex __attribute__((vector_size(PRUNEKIT_VECTOR_BYTES)));

inline LaneIndex lane_indices() {
  LaneIndex lanes;
  for (int i = 0; i < int(kLanes); ++i) lanes[i] = i;
  return lanes;
}

// out[p .. p + V kLanes) (+)= weight[t] X[column[t]][p ..] over the nonzeros, two in flight, each
// with V accumulators. `first`: start from `initial` instead of the running sums in `out`;
// `last`: apply the activation. With V = 1, the first `kept_lanes` lanes of out are stored back as
// they were (the columns past a tile's last whole vector run as the vector ending at the tile's
// end, whose first lanes the vector before has done).
template <int V, typename Index>
inline void spmm_vectors(const float* weight, const Index* column, int64_t nnz, const float* x, int64_t ldx, int64_t p,
                         bool first, bool last, float initial, Activation activation, float* out,
                         int64_t kept_lanes = 0) {
  Vec even[V], odd[V];
  for (int v = 0; v < V; ++v) {
    even[v] = first ? Vec{} + initial : load_vec(out + p + v * kLanes);
    odd[v] = Vec{};
  }
  const float* base = x + p;
  int64_t t = 0;
  for (; t + 2 <= nnz; t += 2) {
    const Vec w0 = Vec{} + weight[t], w1 = Vec{} + weight[t + 1];
    const float* in0 = base + int64_t(column[t]) * ldx;
    const float* in1 = base + int64_t(column[t + 1]) * ldx;
    for (int v = 0; v < V; ++v) {
      even[v] += w0 * load_vec(in0 + v * kLanes);
      odd[v] += w1 * load_vec(in1 + v * kLanes);
    }
  }
  if (t < nnz) {
    const Vec w0 = Vec{} + weight[t];
    const float* in0 = base + int64_t(column[t]) * ldx;
    for (int v = 0; v < V; ++v) even[v] += w0 * load_vec(in0 + v * kLanes);
  }
  for (int v = 0; v < V; ++v) {
    Vec sum = even[v] + odd[v];
    if (last) sum = activate_vec(sum, activation);
    if (kept_lanes > 0) sum = lane_indices() < int32_t(kept_lanes) ? load_vec(out + p + v * kLanes) : sum;
    store_vec(out + p + v * kLanes, sum);
  }
}

// The bitmap's side of the SpMM (a RowSource): each row's k-block decoded into columns.
class BitmapRows {
 public:
  using Index = int32_t;
  BitmapRows(const uint16_t* bitmap, int64_t k)
      : bitmap_(bitmap), words_(bitmap_words(k)), last_word_bits_(bitmap_last_word_bits(k)) {}

  void prefetch(int64_t r, int64_t c0, int64_t /*at*/) const {
    __builtin_prefetch(bitmap_ + r * words_ + c0 / kBitmapWordBits);
  }

  bool columns(int64_t r, int64_t c0, int64_t c1, bool last, int64_t at, int64_t limit, const int32_t*& column,
               int64_t& nnz) {
    const uint16_t* bm = bitmap_ + r * words_;
    const int64_t w0 = c0 / kBitmapWordBits, w1 = (c1 + kBitmapWordBits - 1) / kBitmapWordBits;
    if (int64_t(column_.size()) < (w1 - w0) * kBitmapWordBits + 8) column_.resize((w1 - w0) * kBitmapWordBits + 8);
    nnz = decode_block(bm, w0, w1, column_.data());
    column = column_.data();
    return bitmap_block_in_span(bm, words_, last_word_bits_, last, at, nnz, limit);
  }

 private:
  const uint16_t* bitmap_;
  int64_t words_;
  uint32_t last_word_bits_;
  std::vector<int32_t> column_;
};

// Cache blocking as in the AVX-512 SpMM: column tiles of up to kMaxTileColumns, k-blocks whose
// slice of the tile stays in L1 (widened for sparse weights so a row's block holds about
// kBlockProducts / (the tile's 16-float vectors, as there) nonzeros), row blocks whose running
// sums stay in L2. Each row's k-block is found once per column tile and then swept across the
// tile kTileVectors vectors at a time.
constexpr int64_t kMaxTileColumns = 128;
constexpr int64_t kL1SliceBytes = 24 * 1024;
constexpr int64_t kL2SumsBytes = 256 * 1024;
constexpr int64_t kBlockProducts = 256;
constexpr int64_t kPrefetchRows = 8;
constexpr int64_t kBlockColumnStep = 16;  // k-blocks are whole bitmap words

template <typename RowSource>
Status spmm_rows(RowSource& source, const void* values, ValueType type, const int64_t* row_offsets, int64_t k,
                 const float* x, int64_t ldx, int64_t cols_x, const float* bias, Activation activation, float* y,
                 int64_t ldy, int64_t row_begin, int64_t row_end) {
  if (cols_x < 1) return Status{};  // no outputs
  const int64_t tile = cols_x < kMaxTileColumns ? cols_x : kMaxTileColumns;
  const int64_t tile_bytes = tile * int64_t(sizeof(float));
  const int64_t l1_steps = std::max<int64_t>(1, kL1SliceBytes / tile_bytes / kBlockColumnStep);
  const int64_t steps = (k + kBlockColumnStep - 1) / kBlockColumnStep;
  const int64_t nonzeros = row_offsets[row_end] - row_offsets[row_begin];
  const int64_t nonzeros_per_step =
      std::max<int64_t>(1, nonzeros / std::max<int64_t>(1, (row_end - row_begin) * steps));
  const int64_t block_columns =
      kBlockColumnStep *
      std::clamp<int64_t>(kBlockProducts / ((tile + 15) / 16) / nonzeros_per_step, l1_steps, 4 * l1_steps);
  const int64_t block_rows = std::max<int64_t>(1, kL2SumsBytes / tile_bytes);
  std::vector<float> widened;
  std::vector<int64_t> cursor_storage(row_end - row_begin);
  int64_t* cursor = cursor_storage.data() - row_begin;  // each row's read position in `values`
  const int64_t value_bytes = type == ValueType::kFloat32 ? 4 : 2;
  constexpr int64_t kTile = kTileVectors * kLanes;
  for (int64_t p0 = 0; p0 < cols_x; p0 += tile) {
    const int64_t p1 = p0 + tile < cols_x ? p0 + tile : cols_x;
    for (int64_t r = row_begin; r < row_end; ++r) cursor[r] = row_offsets[r];
    for (int64_t r0 = row_begin; r0 < row_end; r0 += block_rows) {
      const int64_t r1 = std::min(row_end, r0 + block_rows);
      for (int64_t c0 = 0; c0 < k; c0 += block_columns) {
        const int64_t c1 = std::min(k, c0 + block_columns);
        const bool first = c0 == 0, last = c1 == k;
        for (int64_t r = r0; r < r1; ++r) {
          if (r + kPrefetchRows < r1) {
            source.prefetch(r + kPrefetchRows, c0, cursor[r + kPrefetchRows]);
            __builtin_prefetch(static_cast<const char*>(values) + cursor[r + kPrefetchRows] * value_bytes);
          }
          const int64_t at = cursor[r];
          int64_t nnz = 0;
          const typename RowSource::Index* column = nullptr;
          if (!source.columns(r, c0, c1, last, at, row_offsets[r + 1], column, nnz)) {
            return Status{StatusCode::kCorruptMeta, r, c0};
          }
          cursor[r] = at + nnz;
          const float* weight;
          if (type == ValueType::kFloat32) {
            weight = static_cast<const float*>(values) + at;
          } else {
            const uint16_t* in = static_cast<const uint16_t*>(values) + at;
            if (int64_t(widened.size()) < nnz) widened.resize(nnz);
            for (int64_t t = 0; t < nnz; ++t) widened[t] = bf16_to_float(in[t]);
            weight = widened.data();
          }
          const float initial = bias ? bias[r] : 0.0f;
          float* out = y + r * ldy;
          int64_t q = p0;
          for (; q + kTile <= p1; q += kTile) {
            spmm_vectors<kTileVectors>(weight, column, nnz, x, ldx, q, first, last, initial, activation, out);
          }
          switch ((p1 - q) / kLanes) {
            case 3: spmm_vectors<3>(weight, column, nnz, x, ldx, q, first, last, initial, activation, out); break;
            case 2: spmm_vectors<2>(weight, column, nnz, x, ldx, q, first, last, initial, activation, out); break;
            case 1: spmm_vectors<1>(weight, column, nnz, x, ldx, q, first, last, initial, activation, out); break;
            default: break;
          }
          q += (p1 - q) / kLanes * kLanes;
          if (q < p1 && p1 - p0 >= kLanes) {
            // Columns past the last whole vector: one vector more, not a scalar pass per column.
            const int64_t p = p1 - kLanes;
            spmm_vectors<1>(weight, column, nnz, x, ldx, p, first, last, initial, activation, out, q - p);
          } else {
            for (; q < p1; ++q) {  // a tile narrower than a vector
              float acc = first ? initial : out[q];
              for (int64_t t = 0; t < nnz; ++t) acc += weight[t] * x[int64_t(column[t]) * ldx + q];
              out[q] = last ? activate_scalar(acc, activation) : acc;
            }
          }
        }
      }
    }
  }
  return Status{};
}

// CSR16's side of the SpMM (a RowSource): a row's nonzeros of a k-block are the run of its
// indices below the block's end, read in place. Rows are in column order in prunekit's weights;
// a row that is not still gets each nonzero once (a block takes the run up to its first later
// column, the last block the rest), only with x less often in L1.
class Csr16Rows {
 public:
  using Index = uint16_t;
  explicit Csr16Rows(const uint16_t* col_indices) : col_indices_(col_indices) {}

  void prefetch(int64_t /*r*/, int64_t /*c0*/, int64_t at) const { __builtin_prefetch(col_indices_ + at); }

  bool columns(int64_t /*r*/, int64_t /*c0*/, int64_t c1, bool last, int64_t at, int64_t limit, const uint16_t*& column,
               int64_t& nnz) const {
    column = col_indices_ + at;
    int64_t n = 0;
    // Eight indices per branch (the compiler turns the eight compares into one vector compare).
    for (; at + n + 8 <= limit; n += 8) {
      bool beyond = false;
      for (int i = 0; i < 8; ++i) beyond |= column[n + i] >= c1;
      if (beyond) break;
    }
    while (at + n < limit && column[n] < c1) ++n;
    nnz = n;
    return !last || at + n == limit;  // on the last block c1 = k: a column >= k stops the run
  }

 private:
  const uint16_t* col_indices_;
};

// The variants' entry points (bitmap-<isa>.cc, csr16-<isa>.cc).
inline Status bitmap_spmm_impl(const BitmapWeightView& w, const SpmmArgs& a, RowRange range) {
  BitmapRows source(w.bitmap, w.cols);
  return spmm_rows(source, w.values, w.value_type, w.row_offsets, w.cols, a.x, a.ldx, a.cols_x, a.bias, a.activation,
                   a.y, a.ldy, range.begin, range.end);
}

inline Status csr16_spmm_impl(const Csr16WeightView& w, const SpmmArgs& a, RowRange range) {
  if (w.cols < 1 || w.cols > kCsr16MaxColumns) return Status{StatusCode::kBadArgument, 0, 0};
  Csr16Rows source(w.col_indices);
  return spmm_rows(source, w.values, w.value_type, w.row_offsets, w.cols, a.x, a.ldx, a.cols_x, a.bias, a.activation,
                   a.y, a.ldy, range.begin, range.end);
}

}  // namespace
}  // namespace prunekit::cpu
