// Bitmap sparse linear / 1x1 conv kernels for AVX-512 (F, BW, VL, DQ, VBMI2).
// GEMV (batch <= 4, memory bound): each 16-column word expands its packed values into a vector
// with one expand-load (vexpandps / vpexpandw), so the weight streams once at full bandwidth.
// SpMM (larger batches, 1x1 conv): each output row's nonzeros are decoded once, then broadcast
// against 64-wide tiles of the dense operand held in 4 accumulators (XNNPACK's SpMM scheme).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemv_row_sums_avx512.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

// The value stream's next reads are data dependent (each word advances by its popcount), and the
// hardware prefetchers run too short a distance ahead of them: prefetch this far ahead in
// software (measured best at 6-8 KiB on a 2-core Xeon VM; shorter distances leave the 50% and 2:4
// GEMV waiting on memory).
constexpr int64_t kValuePrefetchBytes = 8192;

template <bool kFloat32>
inline __m512 expand_values(const void* values, int64_t offset, __mmask16 mask) {
  if (kFloat32) return _mm512_maskz_expandloadu_ps(mask, static_cast<const float*>(values) + offset);
  // bf16: load the packed run, widen to fp32, then expand in registers (the 16-bit
  // expand-load is slow on some cores, e.g. Zen 4).
  const __mmask16 run = __mmask16(_bzhi_u32(0xffffu, unsigned(__builtin_popcount(mask))));
  const __m256i halves = _mm256_maskz_loadu_epi16(run, static_cast<const uint16_t*>(values) + offset);
  const __m512 packed = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
  return _mm512_maskz_expand_ps(mask, packed);
}

// B batch rows; four words per step, each with its own accumulators (independent FMA chains).
// A step reads its four masks as one 64-bit word: the four value offsets come from popcounts of
// its prefixes, independent of each other, instead of a chain of popcount-and-add per word.
// (Moving the masks into mask registers straight from memory measured slower on this Xeon.)
template <int B, bool kFloat32>
Status gemv_rows(const void* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t rows, int64_t k,
                 const float* x, const float* bias, float* y, int64_t row_begin, int64_t row_end) {
  constexpr int U = 4;
  constexpr int kValueBytes = kFloat32 ? 4 : 2;
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
      uint64_t four;
      std::memcpy(&four, bm + w, sizeof(four));
      const int64_t total = __builtin_popcountll(four);
      if (offset + total > limit) return Status{StatusCode::kCorruptMeta, r, w * kBitmapWordBits};
      _mm_prefetch(static_cast<const char*>(values) + offset * kValueBytes + kValuePrefetchBytes, _MM_HINT_T0);
      const int64_t at[U] = {offset, offset + __builtin_popcountll(four & 0xffffu),
                             offset + __builtin_popcountll(four & 0xffffffffu),
                             offset + __builtin_popcountll(four & 0xffffffffffffu)};
      for (int u = 0; u < U; ++u) {
        const __m512 weights = expand_values<kFloat32>(values, at[u], __mmask16(four >> (16 * u)));
        for (int b = 0; b < B; ++b) {
          acc[u][b] = _mm512_fmadd_ps(weights, _mm512_loadu_ps(x + b * k + (w + u) * kBitmapWordBits), acc[u][b]);
        }
      }
      offset += total;
    }
    for (; w < words; ++w) {
      const __mmask16 mask = bm[w];
      const bool past_k = w >= full_words && (mask & ~tail_mask);
      if (past_k || offset + __builtin_popcount(mask) > limit) {
        return Status{StatusCode::kCorruptMeta, r, w * kBitmapWordBits};
      }
      const __m512 weights = expand_values<kFloat32>(values, offset, mask);
      offset += __builtin_popcount(mask);
      const __mmask16 x_mask = w < full_words ? __mmask16(0xffff) : tail_mask;
      for (int b = 0; b < B; ++b) {
        acc[0][b] = _mm512_fmadd_ps(weights, _mm512_maskz_loadu_ps(x_mask, x + b * k + w * kBitmapWordBits), acc[0][b]);
      }
    }
    if (offset != limit) return Status{StatusCode::kCorruptMeta, r, 0};
    store_row_sums<B, U>(acc, bias, r, rows, y);
  }
  return Status{};
}

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
template <int V>
inline void spmm_row_block(const float* weight, const int32_t* column, int64_t nnz, const float* x,
                           int64_t ldx, __mmask16 last_mask, bool first, bool last, float initial,
                           Activation activation, float* out) {
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
      const float* in = x + column[t + s] * ldx;
      #pragma GCC unroll 8
      for (int v = 0; v + 1 < V; ++v) acc[s][v] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + 16 * v), acc[s][v]);
      acc[s][V - 1] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(last_mask, in + 16 * (V - 1)), acc[s][V - 1]);
    }
  }
  for (; t < nnz; ++t) {
    const __m512 wv = _mm512_set1_ps(weight[t]);
    const float* in = x + column[t] * ldx;
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
constexpr int64_t kL1SliceBytes = 32 * 1024;
constexpr int64_t kL2SumsBytes = 512 * 1024;
constexpr int64_t kBlockNonzeros = 32;
// A row's bitmap and values for one k-block lie a row apart from the previous row's: the
// hardware prefetchers miss that pattern, so prefetch this many rows ahead.
constexpr int64_t kPrefetchRows = 8;

struct SpmmArgs {
  const void* values;
  ValueType type;
  const uint16_t* bitmap;
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

// Scratch of one thread's SpMM: decoded columns and widened values of one row's k-block, and
// each row's read position in `values`, advanced block by block.
struct SpmmScratch {
  std::vector<int32_t> column;
  std::vector<float> widened;
  std::vector<int64_t> cursor;
};

// Y[:, p .. p + 16 V) for this thread's rows; only the last vector may be partial (last_mask).
template <int V>
Status spmm_tile_columns(const SpmmArgs& a, int64_t p, __mmask16 last_mask, int64_t block_words,
                         int64_t block_rows, SpmmScratch& scratch) {
  const int64_t words = bitmap_words(a.k);
  const __mmask16 k_tail_mask =
      a.k % kBitmapWordBits ? __mmask16((1u << (a.k % kBitmapWordBits)) - 1) : __mmask16(0xffff);
  const int64_t value_bytes = a.type == ValueType::kFloat32 ? 4 : 2;
  const char* value_bytes_base = static_cast<const char*>(a.values);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i word_step = _mm512_set1_epi32(kBitmapWordBits);
  int32_t* column = scratch.column.data();
  int64_t* cursor = scratch.cursor.data() - a.row_begin;
  for (int64_t r = a.row_begin; r < a.row_end; ++r) cursor[r] = a.row_offsets[r];
  for (int64_t r0 = a.row_begin; r0 < a.row_end; r0 += block_rows) {
    const int64_t r1 = std::min(a.row_end, r0 + block_rows);
    for (int64_t w0 = 0; w0 < words; w0 += block_words) {
      const int64_t w1 = std::min(words, w0 + block_words);
      const bool first = w0 == 0, last = w1 == words;
      for (int64_t r = r0; r < r1; ++r) {
        if (r + kPrefetchRows < r1) {
          _mm_prefetch(reinterpret_cast<const char*>(a.bitmap + (r + kPrefetchRows) * words + w0), _MM_HINT_T0);
          const char* ahead = value_bytes_base + cursor[r + kPrefetchRows] * value_bytes;
          _mm_prefetch(ahead, _MM_HINT_T0);
          _mm_prefetch(ahead + 64, _MM_HINT_T0);
        }
        // Branch-free decode: each word's set bits become column indices by one vector compress.
        const uint16_t* bm = a.bitmap + r * words;
        int64_t nnz = 0;
        __m512i index = _mm512_add_epi32(lanes, _mm512_set1_epi32(int32_t(w0 * kBitmapWordBits)));
        for (int64_t w = w0; w < w1; ++w) {
          const __mmask16 mask = _load_mask16(const_cast<__mmask16*>(reinterpret_cast<const __mmask16*>(bm + w)));
          _mm512_storeu_si512(column + nnz, _mm512_maskz_compress_epi32(mask, index));
          nnz += __builtin_popcount(bm[w]);
          index = _mm512_add_epi32(index, word_step);
        }
        // The offsets bound every read of `values`; a row must use exactly its span.
        const int64_t at = cursor[r], limit = a.row_offsets[r + 1];
        if (at + nnz > limit || (last && ((bm[words - 1] & ~k_tail_mask) || at + nnz != limit))) {
          return Status{StatusCode::kCorruptMeta, r, w0 * kBitmapWordBits};
        }
        cursor[r] = at + nnz;
        const float* weight;
        if (a.type == ValueType::kFloat32) {
          weight = static_cast<const float*>(a.values) + at;
        } else {
          const uint16_t* in = static_cast<const uint16_t*>(a.values) + at;
          for (int64_t t = 0; t < nnz; t += 16) {
            const __mmask16 mask = nnz - t >= 16 ? __mmask16(0xffff) : __mmask16((1u << (nnz - t)) - 1);
            const __m256i halves = _mm256_maskz_loadu_epi16(mask, in + t);
            _mm512_storeu_ps(scratch.widened.data() + t,
                             _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16)));
          }
          weight = scratch.widened.data();
        }
        spmm_row_block<V>(weight, column, nnz, a.x + p, a.ldx, last_mask, first, last,
                          a.bias ? a.bias[r] : 0.0f, a.activation, a.y + r * a.ldy + p);
      }
    }
  }
  return Status{};
}

}  // namespace

Status bitmap_gemv_avx512(const void* values, ValueType type, const uint16_t* bitmap,
                        const int64_t* row_offsets, int64_t rows, int64_t k, const float* x,
                        int64_t batch, const float* bias, float* y, int64_t row_begin,
                        int64_t row_end) {
  const bool f32 = type == ValueType::kFloat32;
  switch (batch) {
#define PRUNEKIT_GEMV_CASE(B)                                                                              \
  case B:                                                                                                  \
    return f32 ? gemv_rows<B, true>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end)  \
               : gemv_rows<B, false>(values, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    PRUNEKIT_GEMV_CASE(1)
    PRUNEKIT_GEMV_CASE(2)
    PRUNEKIT_GEMV_CASE(3)
    default: PRUNEKIT_GEMV_CASE(4)
#undef PRUNEKIT_GEMV_CASE
  }
}

Status bitmap_spmm_avx512(const void* values, ValueType type, const uint16_t* bitmap,
                        const int64_t* row_offsets, int64_t k, const float* x, int64_t ldx,
                        int64_t cols_x, const float* bias, Activation activation, float* y,
                        int64_t ldy, int64_t row_begin, int64_t row_end) {
  const SpmmArgs args{values, type, bitmap, row_offsets, k, x, ldx, cols_x, bias, activation, y, ldy,
                      row_begin, row_end};
  const int64_t needed_vectors = (cols_x + 15) / 16;
  const int vectors = int(std::min<int64_t>(needed_vectors, kMaxTileVectors));
  const int64_t tile_bytes = 16 * vectors * int64_t(sizeof(float));
  // k-blocks sized for L1, widened (up to 4x, the slice then partly in L2) for sparse weights so
  // that a row's block still holds about kBlockNonzeros nonzeros to spread its fixed costs over.
  const int64_t l1_words = std::max<int64_t>(1, kL1SliceBytes / tile_bytes / kBitmapWordBits);
  const int64_t nonzeros = row_offsets[row_end] - row_offsets[row_begin];
  const int64_t nonzeros_per_word = std::max<int64_t>(1, nonzeros / std::max<int64_t>(1, (row_end - row_begin) * bitmap_words(k)));
  const int64_t block_words = std::clamp<int64_t>(kBlockNonzeros / nonzeros_per_word, l1_words, 4 * l1_words);
  const int64_t block_rows = std::max<int64_t>(1, kL2SumsBytes / tile_bytes);
  // 16 entries of slack: the decode's compress stores whole vectors.
  SpmmScratch scratch{std::vector<int32_t>(block_words * kBitmapWordBits + 16),
                      std::vector<float>(type == ValueType::kFloat32 ? 0 : block_words * kBitmapWordBits + 16),
                      std::vector<int64_t>(row_end - row_begin)};
  for (int64_t p = 0; p < cols_x; p += 16 * vectors) {
    // A partial last tile uses only as many vectors as it has columns.
    const int here = int(std::min<int64_t>(vectors, (cols_x - p + 15) / 16));
    const int64_t last_lanes = cols_x - p - 16 * (here - 1);
    const __mmask16 last_mask = last_lanes >= 16 ? __mmask16(0xffff) : __mmask16((1u << last_lanes) - 1);
    Status status;
    switch (here) {
#define PRUNEKIT_TILE_CASE(V) \
  case V: status = spmm_tile_columns<V>(args, p, last_mask, block_words, block_rows, scratch); break;
      PRUNEKIT_TILE_CASE(8)
      PRUNEKIT_TILE_CASE(7)
      PRUNEKIT_TILE_CASE(6)
      PRUNEKIT_TILE_CASE(5)
      PRUNEKIT_TILE_CASE(4)
      PRUNEKIT_TILE_CASE(3)
      PRUNEKIT_TILE_CASE(2)
      default: status = spmm_tile_columns<1>(args, p, last_mask, block_words, block_rows, scratch); break;
#undef PRUNEKIT_TILE_CASE
    }
    if (!status.ok()) return status;
  }
  return Status{};
}

}  // namespace prunekit::cpu
