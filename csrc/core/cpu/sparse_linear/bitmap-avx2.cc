// Bitmap sparse linear / 1x1 conv kernels for AVX2 + FMA.
// GEMV (batch <= 4): AVX2 has no expand, so each byte of the bitmap (8 columns) picks a lane
// permutation from a 256-entry table; the byte's packed values (a masked load of popcount
// lanes) are permuted into their columns and multiplied with x, so the weight streams once.
// SpMM: the shared vector-extension kernel (bitmap_spmm_impl.h).
#include <immintrin.h>

#define PRUNEKIT_VECTOR_BYTES 32
#include "bitmap_spmm_impl.h"

namespace prunekit::cpu {
namespace {

constexpr int64_t kValuePrefetchBytes = 8192;

// index[bits][lane]: for a marked lane, its rank among the marked lanes (the packed value that
// lands there); for an unmarked lane, 7: lane 7 of the packed vector is zero whenever fewer
// than 8 lanes are marked.
struct PermuteTable {
  alignas(32) int32_t index[256][8];
  PermuteTable() {
    for (int bits = 0; bits < 256; ++bits) {
      int rank = 0;
      for (int lane = 0; lane < 8; ++lane) index[bits][lane] = (bits >> lane) & 1 ? rank++ : 7;
    }
  }
};
const PermuteTable kPermute;
// loadu(kFirstLanes + 8 - n): the first n lanes set.
alignas(32) constexpr int32_t kFirstLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

inline __m256i first_lanes(int n) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kFirstLanes + 8 - n));
}

// The weights of one byte's 8 columns, zero where unmarked. Reads exactly popcount(bits) values.
inline __m256 expand_byte(const void* values, ValueType type, int64_t offset, uint32_t bits) {
  const int count = __builtin_popcount(bits);
  const __m256i lanes = first_lanes(count);
  __m256 packed;
  if (type == ValueType::kFloat32) {
    packed = _mm256_maskload_ps(static_cast<const float*>(values) + offset, lanes);
  } else {
    alignas(16) uint16_t halves[8] = {};
    std::memcpy(halves, static_cast<const uint16_t*>(values) + offset, sizeof(uint16_t) * count);
    const __m256i widened = _mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(halves))), 16);
    packed = _mm256_castsi256_ps(widened);
  }
  const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPermute.index[bits]));
  return _mm256_permutevar8x32_ps(packed, index);
}

template <int B>
Status gemv_rows(const void* values, ValueType type, const uint16_t* bitmap, const int64_t* row_offsets,
                 int64_t rows, int64_t k, const float* x, const float* bias, float* y, int64_t row_begin,
                 int64_t row_end) {
  const int64_t words = bitmap_words(k);
  const int64_t full_words = k / kBitmapWordBits;
  const uint32_t tail_bits = uint32_t(k % kBitmapWordBits);
  const uint32_t tail_mask = (1u << tail_bits) - 1;
  const int value_shift = type == ValueType::kFloat32 ? 2 : 1;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint16_t* bm = bitmap + r * words;
    int64_t offset = row_offsets[r];
    const int64_t limit = row_offsets[r + 1];
    // Even and odd words accumulate apart: four FMA chains in flight instead of two (a loop
    // unrolled by hand: indexing the accumulators by the word's parity would keep them in memory).
    __m256 low0[B], high0[B], low1[B], high1[B];
    for (int b = 0; b < B; ++b) low0[b] = high0[b] = low1[b] = high1[b] = _mm256_setzero_ps();
    bool corrupt = false;
    auto word_dot = [&](int64_t w, __m256* low, __m256* high) {
      const uint32_t word = bm[w];
      const bool tail = w == full_words;
      if ((tail && (word & ~tail_mask)) || offset + __builtin_popcount(word) > limit) {
        corrupt = true;
        return;
      }
      const __m256 w_low = expand_byte(values, type, offset, word & 0xff);
      offset += __builtin_popcount(word & 0xff);
      const __m256 w_high = expand_byte(values, type, offset, word >> 8);
      offset += __builtin_popcount(word >> 8);
      const int64_t c = w * kBitmapWordBits;
      if (!tail) {
        for (int b = 0; b < B; ++b) {
          low[b] = _mm256_fmadd_ps(w_low, _mm256_loadu_ps(x + b * k + c), low[b]);
          high[b] = _mm256_fmadd_ps(w_high, _mm256_loadu_ps(x + b * k + c + 8), high[b]);
        }
      } else {  // columns past k: x is not read there (the bitmap marks none of them)
        const int low_lanes = tail_bits < 8 ? int(tail_bits) : 8;
        const __m256i low_valid = first_lanes(low_lanes), high_valid = first_lanes(int(tail_bits) - low_lanes);
        for (int b = 0; b < B; ++b) {
          low[b] = _mm256_fmadd_ps(w_low, _mm256_maskload_ps(x + b * k + c, low_valid), low[b]);
          high[b] = _mm256_fmadd_ps(w_high, _mm256_maskload_ps(x + b * k + c + 8, high_valid), high[b]);
        }
      }
    };
    int64_t w = 0;
    for (; w + 2 <= words && !corrupt; w += 2) {
      // Far ahead of the data-dependent value reads (see bitmap-avx512.cc).
      if ((w & 3) == 0) __builtin_prefetch(static_cast<const char*>(values) + (offset << value_shift) + kValuePrefetchBytes);
      word_dot(w, low0, high0);
      if (!corrupt) word_dot(w + 1, low1, high1);
    }
    if (w < words && !corrupt) word_dot(w, low0, high0);
    if (corrupt) return Status{StatusCode::kCorruptMeta, r, 0};
    if (offset != limit) return Status{StatusCode::kCorruptMeta, r, 0};
    for (int b = 0; b < B; ++b) {
      const __m256 sum = _mm256_add_ps(_mm256_add_ps(low0[b], high0[b]), _mm256_add_ps(low1[b], high1[b]));
      __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
      half = _mm_add_ps(half, _mm_movehl_ps(half, half));
      half = _mm_add_ss(half, _mm_movehdup_ps(half));
      y[b * rows + r] = _mm_cvtss_f32(half) + (bias ? bias[r] : 0.0f);
    }
  }
  return Status{};
}

}  // namespace

Status bitmap_gemv_avx2(const void* values, ValueType type, const uint16_t* bitmap,
                        const int64_t* row_offsets, int64_t rows, int64_t k, const float* x,
                        int64_t batch, const float* bias, float* y, int64_t row_begin,
                        int64_t row_end) {
  switch (batch) {
    case 1: return gemv_rows<1>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 2: return gemv_rows<2>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    case 3: return gemv_rows<3>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
    default: return gemv_rows<4>(values, type, bitmap, row_offsets, rows, k, x, bias, y, row_begin, row_end);
  }
}

Status bitmap_spmm_avx2(const void* values, ValueType type, const uint16_t* bitmap,
                        const int64_t* row_offsets, int64_t k, const float* x, int64_t ldx,
                        int64_t cols_x, const float* bias, Activation activation, float* y,
                        int64_t ldy, int64_t row_begin, int64_t row_end) {
  return bitmap_spmm_impl(values, type, bitmap, row_offsets, k, x, ldx, cols_x, bias, activation, y, ldy,
                          row_begin, row_end);
}

}  // namespace prunekit::cpu
