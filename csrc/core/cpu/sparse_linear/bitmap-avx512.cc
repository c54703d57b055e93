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

constexpr int64_t kTileVectors = 4;
constexpr int64_t kTile = kTileVectors * 16;

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
    int64_t p = 0;
    for (; p + kTile <= cols_x; p += kTile) {
      __m512 acc0 = initial, acc1 = initial, acc2 = initial, acc3 = initial;
      for (int64_t t = 0; t < nnz; ++t) {
        const __m512 wv = _mm512_set1_ps(weight[t]);
        const float* in = x + column[t] * ldx + p;
        acc0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in), acc0);
        acc1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + 16), acc1);
        acc2 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + 32), acc2);
        acc3 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + 48), acc3);
      }
      _mm512_storeu_ps(out + p, activate(acc0, activation));
      _mm512_storeu_ps(out + p + 16, activate(acc1, activation));
      _mm512_storeu_ps(out + p + 32, activate(acc2, activation));
      _mm512_storeu_ps(out + p + 48, activate(acc3, activation));
    }
    if (p < cols_x) {  // remainder: up to 4 (partial) vectors in one pass over the nonzeros
      const int64_t vectors = (cols_x - p + 15) / 16;
      __mmask16 masks[kTileVectors];
      for (int64_t v = 0; v < kTileVectors; ++v) {
        const int64_t lanes = cols_x - p - 16 * v;
        masks[v] = lanes >= 16 ? __mmask16(0xffff) : lanes > 0 ? __mmask16((1u << lanes) - 1) : __mmask16(0);
      }
      if (vectors == 1) {
        // One vector: four accumulators over interleaved nonzeros keep the FMA pipes busy.
        __m512 acc[kTileVectors] = {initial, _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int64_t t = 0;
        for (; t + kTileVectors <= nnz; t += kTileVectors) {
          for (int64_t u = 0; u < kTileVectors; ++u) {
            acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(weight[t + u]),
                                     _mm512_maskz_loadu_ps(masks[0], x + column[t + u] * ldx + p), acc[u]);
          }
        }
        for (; t < nnz; ++t) {
          acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(weight[t]), _mm512_maskz_loadu_ps(masks[0], x + column[t] * ldx + p), acc[0]);
        }
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_mask_storeu_ps(out + p, masks[0], activate(sum, activation));
      } else {
        __m512 acc[kTileVectors] = {initial, initial, initial, initial};
        for (int64_t t = 0; t < nnz; ++t) {
          const __m512 wv = _mm512_set1_ps(weight[t]);
          const float* in = x + column[t] * ldx + p;
          for (int64_t v = 0; v < kTileVectors; ++v) {
            acc[v] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(masks[v], in + 16 * v), acc[v]);
          }
        }
        for (int64_t v = 0; v < vectors; ++v) {
          _mm512_mask_storeu_ps(out + p + 16 * v, masks[v], activate(acc[v], activation));
        }
      }
    }
  }
  return Status{};
}

}  // namespace prunekit::cpu
