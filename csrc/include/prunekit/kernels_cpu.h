// Torch-free CPU kernels on raw pointers. Each works on a range of rows so that the ATen glue
// can split the work over threads; each returns a Status instead of throwing. Kernel variants are
// named <family>_<op>_<isa>; the run-time choice among them is prunekit/kernel_config.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "prunekit/dtypes.h"

namespace prunekit::cpu {

enum class StatusCode : int {
  kOk = 0,
  kTooManyNonzeros = 1,  // a 2:4 group holds more than two nonzeros
  kCorruptMeta = 2,      // a meta nibble does not name two distinct, ascending columns
  kNonFinite = 3,        // a score is NaN or infinite
  kBadArgument = 4,      // an argument outside the kernel's contract (the caller checks first)
};

struct Status {
  StatusCode code = StatusCode::kOk;
  int64_t row = 0;
  int64_t col = 0;  // first dense column of the offending group / the offending entry
  bool ok() const { return code == StatusCode::kOk; }
};

// Rows [begin, end) of a kernel's output: one thread's share.
struct RowRange {
  int64_t begin;
  int64_t end;
};

// 2:4 compression of the rows in `range` of a row-major (rows, k) matrix whose entries are
// element_bytes wide (1, 2 or 4); is_float selects whether -0.0 counts as zero. Writes values
// (rows, k/2) and reordered meta (see prunekit/format24.h). rows and k must satisfy the layout's
// alignment; the caller checks that.
Status format24_compress_scalar(const void* dense, void* values, void* meta, int64_t rows, int64_t k, int element_bytes,
                                bool is_float, RowRange range);

// Inverse of format24_compress: fills the rows in `range` of dense (rows, k) including zeros.
Status format24_decompress_scalar(const void* values, const void* meta, void* dense, int64_t rows, int64_t k,
                                  int element_bytes, RowRange range);

// N:M keep-mask: in every group of m consecutive entries of a row (rows, k), keep the n largest
// scores; equal scores keep the lower index. k must be a multiple of m, 0 <= n <= m.
Status nm_mask_select_scalar(const void* scores, ScoreType type, bool* keep, int64_t k, int64_t n, int64_t m,
                             RowRange range);

// ---- SparseGPT ----
// The in-block OBS column updates of one block of `cols` columns. w: the block's first column of
// a row-major fp32 weight (row stride ldw), updated in place (pruned entries become 0, the rest
// absorb the error). hinv: the block's diagonal block of the upper Cholesky factor of H^-1 (row
// stride ldh). err (rows x cols, contiguous): the scaled errors, for the caller's lazy update of
// later columns. keep (rows x cols, contiguous): the mask, read when m == 0 (chosen beforehand),
// written when m > 0 (n kept of every m, on updated weights).
struct ObsBlockArgs {
  float* w;
  int64_t ldw;
  const float* hinv;
  int64_t ldh;
  int64_t cols;
  float* err;
  bool* keep;
  int64_t n;
  int64_t m;
};
#define PRUNEKIT_DECLARE_OBS_BLOCK(isa) void obs_block_update_##isa(const ObsBlockArgs& args, RowRange range);
PRUNEKIT_DECLARE_OBS_BLOCK(scalar)
PRUNEKIT_DECLARE_OBS_BLOCK(avx2)
PRUNEKIT_DECLARE_OBS_BLOCK(avx512)
PRUNEKIT_DECLARE_OBS_BLOCK(neon)
#undef PRUNEKIT_DECLARE_OBS_BLOCK

// keep[i] = false for exactly the k smallest scores (ties: lower index first), true otherwise.
void prune_mask_smallest_scalar(const float* scores, int64_t count, int64_t k, bool* keep);

// ---- Bitmap sparse format (unstructured, and 2:4 stored the same way) ----
// A (rows, k) matrix is stored as bitmap (rows, words = ceil(k/16)) uint16, bit b of word w
// marking column 16 w + b, and the marked entries packed row by row in column order into
// values, row r's starting at row_offsets[r] (row_offsets has rows + 1 entries).
// Bytes per weight: (1 - sparsity) * element_bytes + 1/8.
constexpr int64_t kBitmapWordBits = 16;
inline int64_t bitmap_words(int64_t k) { return (k + kBitmapWordBits - 1) / kBitmapWordBits; }
// The bits of a row's last bitmap word that may be set: those of columns below k.
inline uint32_t bitmap_last_word_bits(int64_t k) {
  return k % kBitmapWordBits ? (uint32_t(1) << (k % kBitmapWordBits)) - 1 : 0xffffu;
}
// The SpMMs' check of a row's k-block, `nnz` nonzeros from value `at`: the row's offsets bound
// every read of the values (`limit`: where the next row starts), and its last block must end the
// row's span exactly and mark no column past k.
inline bool bitmap_block_in_span(const uint16_t* row_bitmap, int64_t words, uint32_t last_word_bits, bool last,
                                 int64_t at, int64_t nnz, int64_t limit) {
  return at + nnz <= limit && !(last && ((row_bitmap[words - 1] & ~last_word_bits) || at + nnz != limit));
}

// Each group of four bits of `bits` replaced by its popcount: a stretch of bitmap words marks two
// columns in every group of four (2:4) where this is kTwoInEachNibble (in the words' bits).
inline uint64_t nibble_popcounts(uint64_t bits) {
  bits -= (bits >> 1) & 0x5555555555555555u;
  return (bits & 0x3333333333333333u) + ((bits >> 2) & 0x3333333333333333u);
}
constexpr uint64_t kTwoInEachNibble = 0x2222222222222222u;

// Whether a row of `words` full bitmap words is a 2:4 row, checked before a fixed-offset path runs
// (NEON; the AVX2 path checks each step as it goes); stops at the first group of four that does
// not mark exactly two columns.
inline bool bitmap_row_is_semi24(const uint16_t* row_bitmap, int64_t words) {
  int64_t w = 0;
  for (; w + 4 <= words; w += 4) {
    uint64_t four;
    std::memcpy(&four, row_bitmap + w, sizeof(four));
    if (nibble_popcounts(four) != kTwoInEachNibble) return false;
  }
  for (; w < words; ++w)
    if (nibble_popcounts(row_bitmap[w]) != (kTwoInEachNibble & 0xffffu)) return false;
  return true;
}

enum class ValueType : int { kFloat32, kBFloat16 };
enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2 };

// A bitmap-format weight (rows, cols) as the kernels read it: `values` of `value_type`,
// `bitmap` (rows, bitmap_words(cols)), `row_offsets` (rows + 1 entries).
struct BitmapWeightView {
  const void* values;
  ValueType value_type;
  const uint16_t* bitmap;
  const int64_t* row_offsets;
  int64_t rows;
  int64_t cols;
};

// Pass 1 of compression: bitmap and per-row nonzero counts of the rows in `range`.
void bitmap_scan_scalar(const void* dense, int element_bytes, bool is_float, int64_t k, uint16_t* bitmap,
                        int64_t* row_nnz, RowRange range);
// Pass 2: packs the nonzeros given the bitmap and row offsets.
void bitmap_pack_scalar(const void* dense, int element_bytes, int64_t k, const uint16_t* bitmap,
                        const int64_t* row_offsets, void* values, RowRange range);
// Expands rows back to dense (rows, cols) of the weight's value type (zeros elsewhere).
void bitmap_unpack_scalar(const BitmapWeightView& weight, void* dense, RowRange range);
// Checks that each row's offsets match its bitmap's popcount and that no bit lies past column
// cols (so kernels never read outside values or x); the values are not read. Returns the first
// bad row in status.row.
Status bitmap_validate_scalar(const BitmapWeightView& weight, RowRange range);

// The GEMVs' operands: x (batch, cols) row-major, batch in [1, kGemvMaxBatch]; y (batch, rows)
// fp32 row-major; bias (rows) or null.
constexpr int64_t kGemvMaxBatch = 4;
struct GemvArgs {
  const float* x;
  int64_t batch;
  const float* bias;
  float* y;
};
// As GemvArgs with x in bf16 (bit patterns).
struct GemvBf16Args {
  const uint16_t* x;
  int64_t batch;
  const float* bias;
  float* y;
};
// The SpMMs' operands: Y[r][p] = act(sum_c W[r][c] X[c][p] + bias[r]) for p < cols_x, X (cols,
// cols_x) fp32 with row stride ldx, Y (rows, cols_x) with row stride ldy; bias (rows) or null.
// Serves batched linear (X = x^T) and 1x1 convolution (X = one image's (channels, pixels)).
struct SpmmArgs {
  const float* x;
  int64_t ldx;
  int64_t cols_x;
  const float* bias;
  Activation activation;
  float* y;
  int64_t ldy;
};

// y[b][r] = sum_c W[r][c] x[b][c] + bias[r] for the rows in `range`.
// Kernels never read values outside [0, row_offsets[rows]) (the caller checks that the offsets
// are non-decreasing and end at the size of values; a row's reads may run past its own span into
// the next rows' values, never past the buffer); a row whose bitmap disagrees with its offsets
// or marks columns past cols stops with kCorruptMeta.
#define PRUNEKIT_DECLARE_BITMAP_GEMV(isa) \
  Status bitmap_gemv_##isa(const BitmapWeightView& weight, const GemvArgs& args, RowRange range);
// Y = act(W X + bias) (SpmmArgs) for the rows in `range`, with the GEMV's checks of the weight.
#define PRUNEKIT_DECLARE_BITMAP_SPMM(isa) \
  Status bitmap_spmm_##isa(const BitmapWeightView& weight, const SpmmArgs& args, RowRange range);
PRUNEKIT_DECLARE_BITMAP_GEMV(scalar)
PRUNEKIT_DECLARE_BITMAP_GEMV(avx2)
PRUNEKIT_DECLARE_BITMAP_GEMV(avx512)
PRUNEKIT_DECLARE_BITMAP_GEMV(neon)
PRUNEKIT_DECLARE_BITMAP_SPMM(scalar)
PRUNEKIT_DECLARE_BITMAP_SPMM(avx2)
PRUNEKIT_DECLARE_BITMAP_SPMM(avx512)
PRUNEKIT_DECLARE_BITMAP_SPMM(neon)
#undef PRUNEKIT_DECLARE_BITMAP_GEMV
#undef PRUNEKIT_DECLARE_BITMAP_SPMM

// ---- bf16 weights times bf16 activations (fp32 sums) ----
// The GEMV on CPUs with AVX-512 BF16: bf16 values and x, otherwise as bitmap_gemv_*;
// kBadArgument for fp32 values.
Status bitmap_bf16_gemv_avx512bf16(const BitmapWeightView& weight, const GemvBf16Args& args, RowRange range);

// AMX (bf16 tiles), for batches past the GEMV. Whether this CPU and OS run AMX-BF16 (asks Linux
// for the tile state once; false elsewhere).
bool amx_bf16_usable();
// x (batch, k) bf16 in the B-tile layout: per 32-column chunk, per 16-row batch tile, 16 rows of
// column pairs (VNNI), zero-padded. Elements of the packed buffer:
int64_t bitmap_bf16_packed_x_elements_amx(int64_t batch, int64_t k);
// Packs chunks [chunk_begin, chunk_end) of x (so that callers can split the work).
void bitmap_bf16_pack_x_amx(const uint16_t* x, int64_t batch, int64_t k, uint16_t* packed, int64_t chunk_begin,
                            int64_t chunk_end);
// The AMX SpMM's operands: x packed by bitmap_bf16_pack_x_amx, y (batch, rows) of y_type (fp32,
// or bf16 from the fp32 sums by float_to_bf16, as torch converts a tensor), bias (rows) or null.
struct AmxSpmmArgs {
  const uint16_t* packed_x;
  int64_t batch;
  const float* bias;
  void* y;
  ValueType y_type;
};
// y[b][r] = sum W[r][c] x[b][c] + bias[r] for the rows in `range`. Checks the bitmap as the other
// bitmap kernels do (kCorruptMeta); kBadArgument when AMX is not usable or the values are fp32.
Status bitmap_bf16_spmm_amx(const BitmapWeightView& weight, const AmxSpmmArgs& args, RowRange range);

// ---- CSR16: CSR with 16-bit column indices (unstructured; the batch-1 format at high sparsity) ----
// values (nnz,) packed row by row in column order (as in the bitmap format), col_indices (nnz,)
// their columns, row_offsets (rows + 1). Bytes per weight: (1 - sparsity) * (element_bytes + 2).
constexpr int64_t kCsr16MaxColumns = 65536;
struct Csr16WeightView {
  const void* values;
  ValueType value_type;
  const uint16_t* col_indices;
  const int64_t* row_offsets;
  int64_t rows;
  int64_t cols;
};
// y = W x + bias (GemvArgs) for the rows in `range`. A row naming a column >= cols stops with
// kCorruptMeta (status.col = the row's highest column) without reading x there (checked before
// the products, or as they go with the out-of-range lanes masked out of the gather). Values are
// read only inside [row_offsets[range.begin], row_offsets[range.end]).
#define PRUNEKIT_DECLARE_CSR16_GEMV(isa) \
  Status csr16_gemv_##isa(const Csr16WeightView& weight, const GemvArgs& args, RowRange range);
// Y = act(W X + bias) (SpmmArgs) for larger batches (X = x^T): as the bitmap SpMM, one pass over
// the weight per 128 columns of X, each nonzero broadcast against them. A row naming a column >=
// cols stops with kCorruptMeta (status.row) without reading x there; cols outside [1,
// kCsr16MaxColumns] is kBadArgument.
#define PRUNEKIT_DECLARE_CSR16_SPMM(isa) \
  Status csr16_spmm_##isa(const Csr16WeightView& weight, const SpmmArgs& args, RowRange range);
PRUNEKIT_DECLARE_CSR16_GEMV(scalar)
PRUNEKIT_DECLARE_CSR16_GEMV(avx2)
PRUNEKIT_DECLARE_CSR16_GEMV(avx512)
PRUNEKIT_DECLARE_CSR16_SPMM(scalar)
PRUNEKIT_DECLARE_CSR16_SPMM(avx2)
PRUNEKIT_DECLARE_CSR16_SPMM(avx512)
#undef PRUNEKIT_DECLARE_CSR16_GEMV
#undef PRUNEKIT_DECLARE_CSR16_SPMM

// ---- fp32 transpose: dst (cols, rows) = src (rows, cols)^T ----
// The rows in `range` of src (`cols` entries each, rows `ld_src` >= cols apart) become the same
// columns of dst (rows `ld_dst` apart, ld_dst >= range.end).
#define PRUNEKIT_DECLARE_TRANSPOSE(isa) \
  void transpose_f32_##isa(const float* src, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst, RowRange range);
PRUNEKIT_DECLARE_TRANSPOSE(scalar)
PRUNEKIT_DECLARE_TRANSPOSE(avx2)
PRUNEKIT_DECLARE_TRANSPOSE(avx512)
#undef PRUNEKIT_DECLARE_TRANSPOSE

}  // namespace prunekit::cpu
