// The bitmap SpMM (batched sparse linear, 1x1 convolution), written once on GCC/Clang vector
// extensions and compiled per ISA: the variant .cc files define PRUNEKIT_VECTOR_BYTES (the
// register width) and include this with their own target flags. Everything here has internal
// linkage so that variants built with different flags never mix. (AVX-512 has its own kernel:
// it decodes with vector compress and masks its partial vectors.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "prunekit/half.h"
#include "activation.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

#ifndef PRUNEKIT_VECTOR_BYTES
#error "define PRUNEKIT_VECTOR_BYTES (16 or 32) before including bitmap_spmm_impl.h"
#endif
typedef float Vec __attribute__((vector_size(PRUNEKIT_VECTOR_BYTES)));
constexpr int64_t kLanes = PRUNEKIT_VECTOR_BYTES / sizeof(float);
// Vectors per sweep: 4 columns' worth of accumulators, twice (two nonzeros in flight).
constexpr int kTileVectors = 4;

__attribute__((always_inline)) inline Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void store_vec(float* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }

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

// out[p .. p + V kLanes) (+)= weight[t] X[column[t]][p ..] over the nonzeros, two in flight, each
// with V accumulators. `first`: start from `initial` instead of the running sums in `out`;
// `last`: apply the activation.
template <int V>
inline void spmm_vectors(const float* weight, const int32_t* column, int64_t nnz, const float* x,
                         int64_t ldx, int64_t p, bool first, bool last, float initial, Activation activation,
                         float* out) {
  Vec even[V], odd[V];
  for (int v = 0; v < V; ++v) {
    even[v] = first ? Vec{} + initial : load_vec(out + p + v * kLanes);
    odd[v] = Vec{};
  }
  const float* base = x + p;
  int64_t t = 0;
  for (; t + 2 <= nnz; t += 2) {
    const Vec w0 = Vec{} + weight[t], w1 = Vec{} + weight[t + 1];
    const float* in0 = base + column[t] * ldx;
    const float* in1 = base + column[t + 1] * ldx;
    for (int v = 0; v < V; ++v) {
      even[v] += w0 * load_vec(in0 + v * kLanes);
      odd[v] += w1 * load_vec(in1 + v * kLanes);
    }
  }
  if (t < nnz) {
    const Vec w0 = Vec{} + weight[t];
    const float* in0 = base + column[t] * ldx;
    for (int v = 0; v < V; ++v) even[v] += w0 * load_vec(in0 + v * kLanes);
  }
  for (int v = 0; v < V; ++v) {
    const Vec sum = even[v] + odd[v];
    store_vec(out + p + v * kLanes, last ? activate_vec(sum, activation) : sum);
  }
}

// Cache blocking as in the AVX-512 SpMM: column tiles of up to kMaxTileColumns, k-blocks whose
// slice of the tile stays in L1 (widened for sparse weights so a row's block holds about
// kBlockNonzeros), row blocks whose running sums stay in L2. Each row's k-block is decoded once
// per column tile and then swept across the tile kTileVectors vectors at a time.
constexpr int64_t kMaxTileColumns = 128;
constexpr int64_t kL1SliceBytes = 24 * 1024;
constexpr int64_t kL2SumsBytes = 256 * 1024;
constexpr int64_t kBlockNonzeros = 32;
constexpr int64_t kPrefetchRows = 8;

inline Status bitmap_spmm_impl(const void* values, ValueType type, const uint16_t* bitmap,
                               const int64_t* row_offsets, int64_t k, const float* x, int64_t ldx,
                               int64_t cols_x, const float* bias, Activation activation, float* y,
                               int64_t ldy, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const uint32_t k_tail_bits = k % kBitmapWordBits ? (1u << (k % kBitmapWordBits)) - 1 : 0xffffu;
  const int64_t tile = cols_x < kMaxTileColumns ? cols_x : kMaxTileColumns;
  const int64_t tile_bytes = tile * int64_t(sizeof(float));
  const int64_t l1_words = std::max<int64_t>(1, kL1SliceBytes / tile_bytes / kBitmapWordBits);
  const int64_t nonzeros = row_offsets[row_end] - row_offsets[row_begin];
  const int64_t nonzeros_per_word =
      std::max<int64_t>(1, nonzeros / std::max<int64_t>(1, (row_end - row_begin) * words));
  const int64_t block_words = std::clamp<int64_t>(kBlockNonzeros / nonzeros_per_word, l1_words, 4 * l1_words);
  const int64_t block_rows = std::max<int64_t>(1, kL2SumsBytes / tile_bytes);
  std::vector<int32_t> column(block_words * kBitmapWordBits + 8);
  std::vector<float> widened(type == ValueType::kFloat32 ? 0 : block_words * kBitmapWordBits);
  std::vector<int64_t> cursor_storage(row_end - row_begin);
  int64_t* cursor = cursor_storage.data() - row_begin;  // each row's read position in `values`
  const int64_t value_bytes = type == ValueType::kFloat32 ? 4 : 2;
  constexpr int64_t kTile = kTileVectors * kLanes;
  for (int64_t p0 = 0; p0 < cols_x; p0 += tile) {
    const int64_t p1 = p0 + tile < cols_x ? p0 + tile : cols_x;
    for (int64_t r = row_begin; r < row_end; ++r) cursor[r] = row_offsets[r];
    for (int64_t r0 = row_begin; r0 < row_end; r0 += block_rows) {
      const int64_t r1 = std::min(row_end, r0 + block_rows);
      for (int64_t w0 = 0; w0 < words; w0 += block_words) {
        const int64_t w1 = std::min(words, w0 + block_words);
        const bool first = w0 == 0, last = w1 == words;
        for (int64_t r = r0; r < r1; ++r) {
          if (r + kPrefetchRows < r1) {
            __builtin_prefetch(bitmap + (r + kPrefetchRows) * words + w0);
            __builtin_prefetch(static_cast<const char*>(values) + cursor[r + kPrefetchRows] * value_bytes);
          }
          const uint16_t* bm = bitmap + r * words;
          const int64_t nnz = decode_block(bm, w0, w1, column.data());
          // The offsets bound every read of `values`; a row must use exactly its span and mark
          // no column past k.
          const int64_t at = cursor[r], limit = row_offsets[r + 1];
          if (at + nnz > limit || (last && ((bm[words - 1] & ~k_tail_bits) || at + nnz != limit))) {
            return Status{StatusCode::kCorruptMeta, r, w0 * kBitmapWordBits};
          }
          cursor[r] = at + nnz;
          const float* weight;
          if (type == ValueType::kFloat32) {
            weight = static_cast<const float*>(values) + at;
          } else {
            const uint16_t* in = static_cast<const uint16_t*>(values) + at;
            for (int64_t t = 0; t < nnz; ++t) widened[t] = bf16_to_float(in[t]);
            weight = widened.data();
          }
          const float initial = bias ? bias[r] : 0.0f;
          float* out = y + r * ldy;
          int64_t q = p0;
          for (; q + kTile <= p1; q += kTile) {
            spmm_vectors<kTileVectors>(weight, column.data(), nnz, x, ldx, q, first, last, initial, activation, out);
          }
          switch ((p1 - q) / kLanes) {
            case 3: spmm_vectors<3>(weight, column.data(), nnz, x, ldx, q, first, last, initial, activation, out); break;
            case 2: spmm_vectors<2>(weight, column.data(), nnz, x, ldx, q, first, last, initial, activation, out); break;
            case 1: spmm_vectors<1>(weight, column.data(), nnz, x, ldx, q, first, last, initial, activation, out); break;
            default: break;
          }
          // Columns past the last full vector (fewer than kLanes): scalar.
          for (q += (p1 - q) / kLanes * kLanes; q < p1; ++q) {
            float acc = first ? initial : out[q];
            for (int64_t t = 0; t < nnz; ++t) acc += weight[t] * x[column[t] * ldx + q];
            out[q] = last ? activate_scalar(acc, activation) : acc;
          }
        }
      }
    }
  }
  return Status{};
}

}  // namespace
}  // namespace prunekit::cpu
