// Bitmap sparse linear / 1x1 conv kernels for AVX-512 (F, BW, VL, DQ, VBMI2).
// GEMV (batch <= 4, memory bound): each 16-column word expands its packed values into a vector
// with one expand-load (vexpandps / vpexpandw), so the weight streams once at full bandwidth.
// SpMM (larger batches, 1x1 conv): each output row's nonzeros are decoded once, then broadcast
// against 64-wide tiles of the dense operand held in 4 accumulators (XNNPACK's SpMM scheme).
#include <immintrin.h>

#include <vector>

#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

inline __m512 expand_values(const void* values, ValueType type, int64_t offset, __mmask16 mask) {
  if (type == ValueType::kFloat32) {
    return _mm512_maskz_expandloadu_ps(mask, static_cast<const float*>(values) + offset);
  }
  // bf16: load the packed run, widen to fp32, then expand in registers (the 16-bit
  // expand-load is slow on some cores, e.g. Zen 4).
  const __mmask16 run = __mmask16(_bzhi_u32(0xffffu, unsigned(__builtin_popcount(mask))));
  const __m256i halves = _mm256_maskz_loadu_epi16(run, static_cast<const uint16_t*>(values) + offset);
  const __m512 packed = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
  return _mm512_maskz_expand_ps(mask, packed);
}

// B batch rows, U words in flight (independent accumulators hide the FMA latency).
template <int B, int U>
Status gemv_rows(const void* values, ValueType type, const uint16_t* bitmap, const int64_t* row_offsets,
               int64_t rows, int64_t k, const float* x, const float* bias, float* y,
               int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k), full_words = k / kBitmapWordBits;
  const __mmask16 tail_mask = __mmask16((1u << (k % kBitmapWordBits)) - 1);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint16_t* bm = bitmap + r * words;
    int64_t offset = row_offsets[r];
    const int64_t limit = row_offsets[r + 1];
    __m512 acc[U][B];
    for (int u = 0; u < U; ++u)
      for (int b = 0; b < B; ++b) acc[u][b] = _mm512_setzero_ps();
    int64_t w = 0;
    for (; w + U <= full_words; w += U) {
      int64_t count = 0;
      for (int u = 0; u < U; ++u) count += __builtin_popcount(bm[w + u]);
      if (offset + count > limit) return Status{StatusCode::kCorruptMeta, r, w * kBitmapWordBits};
      for (int u = 0; u < U; ++u) {
        const __mmask16 mask = bm[w + u];
        const __m512 weights = expand_values(values, type, offset, mask);
        offset += __builtin_popcount(mask);
        for (int b = 0; b < B; ++b) {
          acc[u][b] = _mm512_fmadd_ps(weights, _mm512_loadu_ps(x + b * k + (w + u) * kBitmapWordBits), acc[u][b]);
        }
      }
    }
    for (; w < words; ++w) {
      const __mmask16 mask = bm[w];
      const bool past_k = w >= full_words && (mask & ~tail_mask);
      if (past_k || offset + __builtin_popcount(mask) > limit) {
        return Status{StatusCode::kCorruptMeta, r, w * kBitmapWordBits};
      }
      const __m512 weights = expand_values(values, type, offset, mask);
      offset += __builtin_popcount(mask);
      const __mmask16 x_mask = w < full_words ? __mmask16(0xffff) : tail_mask;
      for (int b = 0; b < B; ++b) {
        acc[0][b] = _mm512_fmadd_ps(weights, _mm512_maskz_loadu_ps(x_mask, x + b * k + w * kBitmapWordBits), acc[0][b]);
      }
    }
    if (offset != limit) return Status{StatusCode::kCorruptMeta, r, 0};
    for (int b = 0; b < B; ++b) {
      __m512 sum = acc[0][b];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][b]);
      y[b * rows + r] = _mm512_reduce_add_ps(sum) + (bias ? bias[r] : 0.0f);
    }
  }
  return Status{};
}

inline __m512 activate(__m512 v, Activation activation) {
  if (activation == Activation::kNone) return v;
  v = _mm512_max_ps(v, _mm512_setzero_ps());
  return activation == Activation::kRelu6 ? _mm512_min_ps(v, _mm512_set1_ps(6.0f)) : v;
}

// Y[p .. p + 16 V) of one output row: the nonzeros broadcast against V vectors of each of their
// rows of X; masks cover a partial last vector. With V == 1 four accumulators over interleaved
// nonzeros keep the FMA pipeline full.
template <int V>
inline void spmm_tile(const float* weight, const int32_t* column, int64_t nnz, const float* x,
                      int64_t ldx, int64_t p, int64_t cols_x, __m512 initial, Activation activation,
                      float* out) {
  constexpr int A = V == 1 ? 4 : V;  // accumulators
  __mmask16 masks[V];
  for (int v = 0; v < V; ++v) {
    const int64_t lanes = cols_x - p - 16 * v;
    masks[v] = lanes >= 16 ? __mmask16(0xffff) : lanes > 0 ? __mmask16((1u << lanes) - 1) : __mmask16(0);
  }
  __m512 acc[A];
  for (int a = 0; a < A; ++a) acc[a] = a < V ? initial : _mm512_setzero_ps();
  const float* base = x + p;
  if (V == 1) {
    int64_t t = 0;
    for (; t + 4 <= nnz; t += 4) {
      for (int u = 0; u < 4; ++u) {
        acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(weight[t + u]),
                                 _mm512_maskz_loadu_ps(masks[0], base + column[t + u] * ldx), acc[u]);
      }
    }
    for (; t < nnz; ++t) {
      acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(weight[t]), _mm512_maskz_loadu_ps(masks[0], base + column[t] * ldx), acc[0]);
    }
    acc[0] = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
  } else {
    for (int64_t t = 0; t < nnz; ++t) {
      const __m512 wv = _mm512_set1_ps(weight[t]);
      const float* in = base + column[t] * ldx;
      // Only the last vector can be partial: full vectors load unmasked.
      for (int v = 0; v + 1 < V; ++v) acc[v] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + 16 * v), acc[v]);
      acc[V - 1] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(masks[V - 1], in + 16 * (V - 1)), acc[V - 1]);
    }
  }
  for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(out + p + 16 * v, masks[v], activate(acc[v], activation));
}

constexpr int kMaxTileVectors = 8;

// One tile of width `vectors` (1..kMaxTileVectors) vectors, dispatched to its template.
inline void spmm_tile_any(int vectors, const float* weight, const int32_t* column, int64_t nnz,
                          const float* x, int64_t ldx, int64_t p, int64_t cols_x, __m512 initial,
                          Activation activation, float* out) {
  switch (vectors) {
#define PRUNEKIT_TILE_CASE(V) \
  case V: spmm_tile<V>(weight, column, nnz, x, ldx, p, cols_x, initial, activation, out); break;
    PRUNEKIT_TILE_CASE(8)
    PRUNEKIT_TILE_CASE(7)
    PRUNEKIT_TILE_CASE(6)
    PRUNEKIT_TILE_CASE(5)
    PRUNEKIT_TILE_CASE(4)
    PRUNEKIT_TILE_CASE(3)
    PRUNEKIT_TILE_CASE(2)
    default: spmm_tile<1>(weight, column, nnz, x, ldx, p, cols_x, initial, activation, out); break;
#undef PRUNEKIT_TILE_CASE
  }
}

// Tile width in vectors: the widest (up to kMaxTileVectors) whose slice of X (k rows) stays
// within L2, and no wider than the columns need. Wide tiles amortise the per-nonzero work
// (broadcast, index, address) over more FMAs and cut the number of passes over each row.
inline int tile_vectors(int64_t k, int64_t cols_x) {
  constexpr int64_t kSliceBytes = 512 * 1024;
  int vectors = kMaxTileVectors;
  while (vectors > 1 && k * 16 * vectors * int64_t(sizeof(float)) > kSliceBytes) vectors /= 2;
  const int64_t needed = (cols_x + 15) / 16;
  return int(needed < vectors ? needed : vectors);
}

}  // namespace

Status bitmap_gemv_avx512(const void* values, ValueType type, const uint16_t* bitmap,
                        const int64_t* row_offsets, int64_t rows, int64_t k, const float* x,
                        int64_t batch, const float* bias, float* y, int64_t row_begin,
                        int64_t row_end) {
  switch (batch) {
    case 1: return gemv_rows<1, 4>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 2: return gemv_rows<2, 2>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3, 1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4, 1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

Status bitmap_spmm_avx512(const void* values, ValueType type, const uint16_t* bitmap,
                        const int64_t* row_offsets, int64_t k, const float* x, int64_t ldx,
                        int64_t cols_x, const float* bias, Activation activation, float* y,
                        int64_t ldy, int64_t row_begin, int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const __mmask16 tail_mask =
      k % kBitmapWordBits ? __mmask16((1u << (k % kBitmapWordBits)) - 1) : __mmask16(0xffff);
  // Decoded nonzeros of one row (16 entries of slack: the compress step stores whole vectors).
  std::vector<int32_t> column_storage(k + 16);
  std::vector<float> weight_storage(type == ValueType::kFloat32 ? 0 : k + 16);
  int32_t* column = column_storage.data();
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int vectors = tile_vectors(k, cols_x);
  const int64_t tile = 16 * vectors;
  // Tiles outermost: each X slice is reused by all of this thread's rows while it sits in L2;
  // a row's nonzeros are decoded again per tile (cheap next to the FMAs of a tile).
  for (int64_t p = 0; p < cols_x; p += tile) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      // Branch-free decode: each word's set bits become column indices by one vector compress.
      const uint16_t* bm = bitmap + r * words;
      int64_t nnz = 0;
      for (int64_t w = 0; w < words; ++w) {
        const __mmask16 mask = bm[w];
        const __m512i index = _mm512_add_epi32(lanes, _mm512_set1_epi32(int32_t(w * kBitmapWordBits)));
        _mm512_storeu_si512(column + nnz, _mm512_maskz_compress_epi32(mask, index));
        nnz += __builtin_popcount(mask);
      }
      if ((bm[words - 1] & ~tail_mask) || nnz != row_offsets[r + 1] - row_offsets[r]) {
        return Status{StatusCode::kCorruptMeta, r, 0};
      }
      const float* weight;
      if (type == ValueType::kFloat32) {
        weight = static_cast<const float*>(values) + row_offsets[r];
      } else {
        const uint16_t* in = static_cast<const uint16_t*>(values) + row_offsets[r];
        for (int64_t t = 0; t < nnz; t += 16) {
          const __mmask16 mask = nnz - t >= 16 ? __mmask16(0xffff) : __mmask16((1u << (nnz - t)) - 1);
          const __m256i halves = _mm256_maskz_loadu_epi16(mask, in + t);
          _mm512_storeu_ps(weight_storage.data() + t,
                           _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16)));
        }
        weight = weight_storage.data();
      }
      const __m512 initial = _mm512_set1_ps(bias ? bias[r] : 0.0f);
      float* out = y + r * ldy;
      // A partial last tile uses only as many vectors as it has columns.
      const int64_t remaining_vectors = (cols_x - p + 15) / 16;
      const int here = remaining_vectors < vectors ? int(remaining_vectors) : vectors;
      spmm_tile_any(here, weight, column, nnz, x, ldx, p, cols_x, initial, activation, out);
    }
  }
  return Status{};
}

}  // namespace prunekit::cpu
