// The bitmap SpMM (batched sparse linear, 1x1 convolution), written once on GCC/Clang vector
// extensions and compiled per ISA: the variant .cc files define PRUNEKIT_VECTOR_BYTES (the
// register width) and include this with their own target flags. Everything here has internal
// linkage so that variants built with different flags never mix. (AVX-512 has its own kernel:
// it decodes with vector compress and masks its partial vectors.)
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

#ifndef PRUNEKIT_VECTOR_BYTES
#error "define PRUNEKIT_VECTOR_BYTES (16 or 32) before including bitmap_spmm_impl.h"
#endif
typedef float Vec __attribute__((vector_size(PRUNEKIT_VECTOR_BYTES)));
constexpr int64_t kLanes = PRUNEKIT_VECTOR_BYTES / sizeof(float);
// Vectors per tile: 4 columns' worth of accumulators, twice (two nonzeros in flight).
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
  v = v > zero ? v : zero;
  if (activation == Activation::kRelu6) {
    const Vec six = zero + 6.0f;
    v = v < six ? v : six;
  }
  return v;
}

inline float activate_scalar(float v, Activation activation) {
  if (activation == Activation::kNone) return v;
  v = v > 0.0f ? v : 0.0f;
  return activation == Activation::kRelu6 && v > 6.0f ? 6.0f : v;
}

// The columns of row r's nonzeros, in order; -1 when the bitmap marks a column past k or
// disagrees with the row's offsets (then nothing is read from values).
inline int64_t decode_columns(const uint16_t* bm, int64_t words, int64_t k, int64_t expected,
                              int32_t* column) {
  int64_t nnz = 0;
  for (int64_t w = 0; w < words; ++w) {
    for (uint32_t word = bm[w]; word; word &= word - 1) {
      const int64_t c = w * kBitmapWordBits + __builtin_ctz(word);
      if (c >= k || nnz == expected) return -1;
      column[nnz++] = int32_t(c);
    }
  }
  return nnz == expected ? nnz : -1;
}

// out[p .. p + V kLanes) = act(initial + sum_t weight[t] X[column[t]][p ..]): two nonzeros in
// flight, each with V accumulators.
template <int V>
inline void spmm_vectors(const float* weight, const int32_t* column, int64_t nnz, const float* x,
                         int64_t ldx, int64_t p, float initial, Activation activation, float* out) {
  Vec even[V], odd[V];
  for (int v = 0; v < V; ++v) {
    even[v] = Vec{} + initial;
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
  for (int v = 0; v < V; ++v) store_vec(out + p + v * kLanes, activate_vec(even[v] + odd[v], activation));
}

inline Status bitmap_spmm_impl(const void* values, ValueType type, const uint16_t* bitmap,
                               const int64_t* row_offsets, int64_t k, const float* x, int64_t ldx,
                               int64_t cols_x, const float* bias, Activation activation, float* y,
                               int64_t ldy, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  std::vector<int32_t> column(k);
  std::vector<float> widened(type == ValueType::kFloat32 ? 0 : k);
  constexpr int64_t kTile = kTileVectors * kLanes;
  // Tiles of X outermost: a tile's slice of X (k rows) is reused by every row of this thread.
  for (int64_t p = 0; p < cols_x; p += kTile) {
    const int64_t tile_end = p + kTile < cols_x ? p + kTile : cols_x;
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t nnz = decode_columns(bitmap + r * words, words, k, row_offsets[r + 1] - row_offsets[r],
                                         column.data());
      if (nnz < 0) return Status{StatusCode::kCorruptMeta, r, 0};
      const float* weight;
      if (type == ValueType::kFloat32) {
        weight = static_cast<const float*>(values) + row_offsets[r];
      } else {
        const uint16_t* in = static_cast<const uint16_t*>(values) + row_offsets[r];
        for (int64_t t = 0; t < nnz; ++t) widened[t] = bf16_to_float(in[t]);
        weight = widened.data();
      }
      const float initial = bias ? bias[r] : 0.0f;
      float* out = y + r * ldy;
      int64_t q = p;
      const int64_t full = (tile_end - p) / kLanes;
      switch (full) {
        case 4: spmm_vectors<4>(weight, column.data(), nnz, x, ldx, q, initial, activation, out); break;
        case 3: spmm_vectors<3>(weight, column.data(), nnz, x, ldx, q, initial, activation, out); break;
        case 2: spmm_vectors<2>(weight, column.data(), nnz, x, ldx, q, initial, activation, out); break;
        case 1: spmm_vectors<1>(weight, column.data(), nnz, x, ldx, q, initial, activation, out); break;
        default: break;
      }
      // Columns past the last full vector (fewer than kLanes): scalar.
      for (q = p + full * kLanes; q < tile_end; ++q) {
        float acc = initial;
        for (int64_t t = 0; t < nnz; ++t) acc += weight[t] * x[column[t] * ldx + q];
        out[q] = activate_scalar(acc, activation);
      }
    }
  }
  return Status{};
}

}  // namespace
}  // namespace prunekit::cpu
