// The AVX-512 SpMM's blocking and products, shared by the bitmap and the CSR16 formats:
// Y[r][p] = act(sum_c W[r][c] X[c][p] + bias[r]). Each output row's nonzeros of one k-block are
// found once (a format's RowSource: the bitmap decodes them into columns, CSR16 reads its indices
// in place), then broadcast against 16 V-wide tiles of X held in accumulators (XNNPACK's SpMM
// scheme). Included by variant files built with AVX-512 flags; internal linkage.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "prunekit/bf16_x86.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

inline __m512 activate(__m512 v, Activation activation) {
  if (activation == Activation::kNone) return v;
  // max/min return their second operand when either is NaN: v second, so NaN passes through.
  v = _mm512_max_ps(_mm512_setzero_ps(), v);
  return activation == Activation::kRelu6 ? _mm512_min_ps(_mm512_set1_ps(6.0f), v) : v;
}

// One output row's partial sums over one k-block: out[0 .. 16 V) (+)= sum_t weight[t] X[column[t]][..]
// with S interleaved nonzero streams, so that S * V >= 8 independent accumulators keep both FMA
// pipes busy. `first`: start from `initial` (the bias) instead of the running sums in `out`;
// `last`: apply the activation. Only the last vector may be partial (`last_mask`).
template <int V, typename Index>
inline void spmm_row_block(const float* weight, const Index* column, int64_t nnz, const float* x, int64_t ldx,
                           __mmask16 last_mask, bool first, bool last, float initial, Activation activation,
                           float* out) {
  constexpr int S = V >= 8 ? 1 : V >= 4 ? 2 : V >= 2 ? 4 : 8;
  __m512 acc[S][V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    acc[0][v] = first ? _mm512_set1_ps(initial)
                      : _mm512_maskz_loadu_ps(v + 1 < V ? __mmask16(0xffff) : last_mask, out + 16 * v);
#pragma GCC unroll 8
    for (int s = 1; s < S; ++s) acc[s][v] = _mm512_setzero_ps();
  }
  int64_t t = 0;
  for (; t + S <= nnz; t += S) {
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
      const __m512 wv = _mm512_set1_ps(weight[t + s]);
      const float* in = x + int64_t(column[t + s]) * ldx;
#pragma GCC unroll 8
      for (int v = 0; v + 1 < V; ++v) acc[s][v] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + 16 * v), acc[s][v]);
      acc[s][V - 1] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(last_mask, in + 16 * (V - 1)), acc[s][V - 1]);
    }
  }
  for (; t < nnz; ++t) {
    const __m512 wv = _mm512_set1_ps(weight[t]);
    const float* in = x + int64_t(column[t]) * ldx;
#pragma GCC unroll 8
    for (int v = 0; v + 1 < V; ++v) acc[0][v] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + 16 * v), acc[0][v]);
    acc[0][V - 1] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(last_mask, in + 16 * (V - 1)), acc[0][V - 1]);
  }
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    __m512 sum = acc[0][v];
#pragma GCC unroll 8
    for (int s = 1; s < S; ++s) sum = _mm512_add_ps(sum, acc[s][v]);
    if (last) sum = activate(sum, activation);
    _mm512_mask_storeu_ps(out + 16 * v, v + 1 < V ? __mmask16(0xffff) : last_mask, sum);
  }
}

constexpr int kMaxTileVectors = 8;

// Cache blocking (GotoBLAS-style, with the sparse weight as the streamed operand): a tile of
// 16 V columns of X; k-blocks whose slice of that tile (k_block x 16 V floats) stays in L1 while
// every row of a row block uses it; row blocks whose running sums (rows x 16 V floats) stay in L2.
// Sparse weights widen the k-blocks (up to 4x, the slice then partly in L2) until a row's block
// holds about kBlockProducts / V nonzeros: each row's visit of a block has fixed costs (its
// accumulators, their reduction, mispredicted loop exits) that narrow tiles repay only over many
// nonzeros (wide tiles keep short visits, where L1 hits matter more).
constexpr int64_t kL1SliceBytes = 32 * 1024;
constexpr int64_t kL2SumsBytes = 512 * 1024;
constexpr int64_t kBlockProducts = 256;
// A row's metadata and values for one k-block lie a row apart from the previous row's: the
// hardware prefetchers miss that pattern, so prefetch this many rows ahead, the block's expected
// share of the row (up to kMaxPrefetchNonzeros), not only its first lines.
constexpr int64_t kPrefetchRows = 8;
constexpr int64_t kMaxPrefetchNonzeros = 512;

// Into L1, the cache lines of [address, address + bytes). Prefetches never fault, so the range
// may run past a buffer; the address is formed as an integer, never as an out-of-range pointer.
inline void prefetch_lines(uintptr_t address, int64_t bytes) {
  for (int64_t line = 0; line < bytes; line += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(address + line), _MM_HINT_T0);
  }
}
// k-blocks are whole multiples of this many columns (the bitmap's word).
constexpr int64_t kBlockColumnStep = 16;

// One SpMM call of a variant: the weight's values and rows, the operands, the thread's rows.
struct SpmmCall {
  const void* values;
  ValueType type;
  const int64_t* row_offsets;
  int64_t k;
  const float* x;
  int64_t ldx;
  int64_t cols_x;
  const float* bias;
  Activation activation;
  float* y;
  int64_t ldy;
  int64_t row_begin;
  int64_t row_end;
};

// A format's side of the SpMM (RowSource): the column type `Index`, and
//   bool columns(r, c0, c1, last, at, limit, column, nnz): row r's nonzeros from value position
//     `at` (its read position; `limit` ends its span) in columns [c0, c1) (c1 = k on the last
//     block): their columns in `column`, their count in nnz; false when the row is corrupt
//     (then nothing outside the weight or x has been read; every column given is < k);
//   void prefetch(r, c0, c1, at, nonzeros): row r's metadata of block [c0, c1), whose nonzeros
//     start at value position `at` (about `nonzeros` of them).
// Widened values of one row's k-block (bf16 weights) and each row's read position in `values`.
struct SpmmScratch {
  std::vector<float> widened;
  std::vector<int64_t> cursor;
};

// Y[:, p .. p + 16 V) for this thread's rows; only the last vector may be partial (last_mask).
template <int V, typename RowSource>
Status spmm_tile_columns(const SpmmCall& a, RowSource& source, int64_t p, __mmask16 last_mask, int64_t block_columns,
                         int64_t block_nonzeros, int64_t block_rows, SpmmScratch& scratch) {
  const int64_t value_bytes = a.type == ValueType::kFloat32 ? 4 : 2;
  int64_t* cursor = scratch.cursor.data() - a.row_begin;
  for (int64_t r = a.row_begin; r < a.row_end; ++r) cursor[r] = a.row_offsets[r];
  for (int64_t r0 = a.row_begin; r0 < a.row_end; r0 += block_rows) {
    const int64_t r1 = std::min(a.row_end, r0 + block_rows);
    for (int64_t c0 = 0; c0 < a.k; c0 += block_columns) {
      const int64_t c1 = std::min(a.k, c0 + block_columns);
      const bool first = c0 == 0, last = c1 == a.k;
      for (int64_t r = r0; r < r1; ++r) {
        if (r + kPrefetchRows < r1) {
          source.prefetch(r + kPrefetchRows, c0, c1, cursor[r + kPrefetchRows], block_nonzeros);
          prefetch_lines(reinterpret_cast<uintptr_t>(a.values) + cursor[r + kPrefetchRows] * value_bytes,
                         block_nonzeros * value_bytes);
        }
        const int64_t at = cursor[r];
        int64_t nnz = 0;
        const typename RowSource::Index* column = nullptr;
        if (!source.columns(r, c0, c1, last, at, a.row_offsets[r + 1], column, nnz)) {
          return Status{StatusCode::kCorruptMeta, r, c0};
        }
        cursor[r] = at + nnz;
        const float* weight;
        if (a.type == ValueType::kFloat32) {
          weight = static_cast<const float*>(a.values) + at;
        } else {
          const uint16_t* in = static_cast<const uint16_t*>(a.values) + at;
          if (int64_t(scratch.widened.size()) < nnz + 16) scratch.widened.resize(nnz + 16);
          for (int64_t t = 0; t < nnz; t += 16) {
            const __mmask16 mask = nnz - t >= 16 ? __mmask16(0xffff) : __mmask16((1u << (nnz - t)) - 1);
            const __m256i halves = _mm256_maskz_loadu_epi16(mask, in + t);
            _mm512_storeu_ps(scratch.widened.data() + t, widen_bf16x16(halves));
          }
          weight = scratch.widened.data();
        }
        spmm_row_block<V>(weight, column, nnz, a.x + p, a.ldx, last_mask, first, last, a.bias ? a.bias[r] : 0.0f,
                          a.activation, a.y + r * a.ldy + p);
      }
    }
  }
  return Status{};
}

// The whole SpMM for rows [row_begin, row_end): tiles of up to kMaxTileVectors vectors of X.
template <typename RowSource>
Status spmm_rows(const SpmmCall& a, RowSource& source) {
  if (a.cols_x < 1) return Status{};  // no outputs
  const int64_t needed_vectors = (a.cols_x + 15) / 16;
  const int vectors = int(std::min<int64_t>(needed_vectors, kMaxTileVectors));
  const int64_t tile_bytes = 16 * vectors * int64_t(sizeof(float));
  const int64_t l1_steps = std::max<int64_t>(1, kL1SliceBytes / tile_bytes / kBlockColumnStep);
  const int64_t steps = (a.k + kBlockColumnStep - 1) / kBlockColumnStep;
  const int64_t nonzeros = a.row_offsets[a.row_end] - a.row_offsets[a.row_begin];
  const int64_t nonzeros_per_step =
      std::max<int64_t>(1, nonzeros / std::max<int64_t>(1, (a.row_end - a.row_begin) * steps));
  const int64_t block_columns =
      kBlockColumnStep * std::clamp<int64_t>(kBlockProducts / vectors / nonzeros_per_step, l1_steps, 4 * l1_steps);
  const int64_t block_rows = std::max<int64_t>(1, kL2SumsBytes / tile_bytes);
  const int64_t block_nonzeros = std::min<int64_t>(
      kMaxPrefetchNonzeros, (nonzeros * std::min(block_columns, a.k) + a.k * (a.row_end - a.row_begin) - 1) /
                                std::max<int64_t>(1, a.k * (a.row_end - a.row_begin)));
  SpmmScratch scratch{std::vector<float>(), std::vector<int64_t>(a.row_end - a.row_begin)};
  for (int64_t p = 0; p < a.cols_x; p += 16 * vectors) {
    // A partial last tile uses only as many vectors as it has columns.
    const int here = int(std::min<int64_t>(vectors, (a.cols_x - p + 15) / 16));
    const int64_t last_lanes = a.cols_x - p - 16 * (here - 1);
    const __mmask16 last_mask = last_lanes >= 16 ? __mmask16(0xffff) : __mmask16((1u << last_lanes) - 1);
    Status status;
    switch (here) {
#define PRUNEKIT_TILE_CASE(V)                                                                                   \
  case V:                                                                                                       \
    status = spmm_tile_columns<V>(a, source, p, last_mask, block_columns, block_nonzeros, block_rows, scratch); \
    break;
      PRUNEKIT_TILE_CASE(8)
      PRUNEKIT_TILE_CASE(7)
      PRUNEKIT_TILE_CASE(6)
      PRUNEKIT_TILE_CASE(5)
      PRUNEKIT_TILE_CASE(4)
      PRUNEKIT_TILE_CASE(3)
      PRUNEKIT_TILE_CASE(2)
      default:
        status = spmm_tile_columns<1>(a, source, p, last_mask, block_columns, block_nonzeros, block_rows, scratch);
        break;
#undef PRUNEKIT_TILE_CASE
    }
    if (!status.ok()) return status;
  }
  return Status{};
}

}  // namespace
}  // namespace prunekit::cpu
