// Bitmap sparse linear with bf16 weights and bf16 activations on AMX tiles (Sapphire Rapids and
// later), for batches past the GEMV: y^T = W x^T with W as the A operand. A block of 32 weight
// rows is expanded from the bitmap once into a dense bf16 panel (one 16-bit expand per 32
// columns, rows of 64 bytes: the A tile layout as is), then every pair of 16-row batch tiles of
// the pre-packed x (VNNI pairs) meets it through four tile multiply-adds per 32 columns. When the
// packed x is larger than an L2 share, the columns go in k-blocks whose slice of it stays in L2
// while every panel of the thread's rows meets it (one pass over all of k per panel would stream
// the whole packed x from L3 once per 32 weight rows); the C tiles wait between k-blocks in a
// buffer of partial sums, and the last k-block writes y through register transpositions.
// AMX does not skip zeros: this path is about dense AMX speed with the compressed weight's
// memory, where the vector SpMM runs at a fraction of the dense AMX GEMM. Products of two bf16
// numbers are exact in fp32 and sums are fp32 (denormal inputs are flushed to zero).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "../transpose/transpose_impl.h"
#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

constexpr int64_t kChunk = 32;        // columns per A tile row (32 bf16 = 64 bytes)
constexpr int64_t kTileRows = 16;     // rows of every tile
constexpr int64_t kBlockRows = 32;    // weight rows per panel: two A tiles
constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes
// Bytes of packed x per k-block: half of a 2 MiB L2 (Sapphire Rapids and later), the rest holds
// the panel and the C tiles' output.
constexpr int64_t kKBlockPackedXBytes = 1 << 20;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (2 weight tiles x 2 batch tiles of 16 x 16 fp32); 4, 5: A (weights); 6, 7: B (x).
void load_tile_config() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = kTileRows;
  }
  _tile_loadconfig(&config);
}

// Elements from p to the first 64-byte boundary.
template <typename T>
int64_t aligned_offset(const T* p) {
  return int64_t((64 - reinterpret_cast<uintptr_t>(p) % 64) % 64 / sizeof(T));
}

inline uint32_t chunk_mask(const uint16_t* row_bits, int64_t words, int64_t chunk) {
  const uint32_t low = row_bits[2 * chunk];
  const uint32_t high = 2 * chunk + 1 < words ? row_bits[2 * chunk + 1] : 0u;
  return low | (high << 16);
}

// Elements per panel row: the row's chunks, plus one chunk of padding so that the 16 rows an A
// tile load reads do not all fall into the same few cache sets.
inline int64_t panel_stride(int64_t chunks) { return (chunks + 1) * kChunk; }

// Expands chunks [chunk_begin, chunk_end) of rows [n0, n0 + 32) (those < row_end; the rest
// zero) into the panel, row by row (sequential stores; a chunk-major panel measured 3x slower to
// fill). cursors[i]: where row n0 + i's values of chunk_begin start, advanced to chunk_end.
Status expand_panel(const uint16_t* values, const uint16_t* bitmap, const int64_t* row_offsets, int64_t k, int64_t n0,
                    int64_t row_end, int64_t chunk_begin, int64_t chunk_end, int64_t* cursors, uint16_t* panel) {
  const int64_t words = bitmap_words(k), chunks = (k + kChunk - 1) / kChunk, width = chunk_end - chunk_begin;
  // Bits past k in a row's last chunk must be clear, as in every bitmap kernel.
  const uint32_t tail = k % kChunk ? uint32_t((1ull << (k % kChunk)) - 1) : 0xffffffffu;
  for (int64_t i = 0; i < kBlockRows; ++i) {
    const int64_t n = n0 + i;
    uint16_t* out = panel + i * panel_stride(width) - chunk_begin * kChunk;
    if (n >= row_end) {
      for (int64_t c = chunk_begin; c < chunk_end; ++c) _mm512_storeu_si512(out + c * kChunk, _mm512_setzero_si512());
      continue;
    }
    const uint16_t* row_bits = bitmap + n * words;
    int64_t offset = cursors[i];
    const int64_t limit = row_offsets[n + 1];
    // The next row's slice is prefetched while this one expands: its bitmap words now, its values
    // at this row's progress into its own slice. Consecutive rows' slices lie a whole
    // row apart when k is split into k-blocks, where the hardware prefetchers lose the stream at
    // every row.
    const int64_t next_row_distance = n + 1 < row_end ? cursors[i + 1] - offset : 0;
    if (n + 1 < row_end) {
      const auto next_bits = reinterpret_cast<uintptr_t>(row_bits + words + 2 * chunk_begin);
      for (int64_t byte = 0; byte < 4 * width; byte += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(next_bits + byte), _MM_HINT_T0);
      }
    }
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      const uint32_t mask = chunk_mask(row_bits, words, c);
      const unsigned count = unsigned(__builtin_popcount(mask));
      if ((c + 1 == chunks && (mask & ~tail)) || offset + count > limit) {
        return Status{StatusCode::kCorruptMeta, n, c * kChunk};
      }
      // One prefetch per chunk, unconditionally: skipping repeats of a line by a branch mispredicts
      // on unstructured patterns. The address is formed
      // as an integer: a prefetch never faults, a pointer past the values would be UB.
      const uintptr_t ahead = reinterpret_cast<uintptr_t>(values) + uintptr_t(offset + next_row_distance) * 2;
      _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
      const __m512i packed = _mm512_maskz_loadu_epi16(__mmask32(_bzhi_u32(0xffffffffu, count)), values + offset);
      _mm512_storeu_si512(out + c * kChunk, _mm512_maskz_expand_epi16(__mmask32(mask), packed));
      offset += count;
    }
    if (chunk_end == chunks && offset != limit) return Status{StatusCode::kCorruptMeta, n, 0};
    cursors[i] = offset;
  }
  return Status{};
}

// Where C tiles wait between k-blocks: fp32 sums of the thread's rows x the batch padded to whole
// tiles, row-major, so that a C tile is stored and loaded as is (parking it in y would need a
// transposition and a scalar read-modify-write per element).
struct PartialSums {
  float* data;
  int64_t first_row;  // the thread's row_begin
  int64_t stride;     // floats per row: batch_tiles * 16
  float* at(int64_t n, int64_t bt) const { return data + (n - first_row) * stride + bt * kTileRows; }
};

// Where the last k-block writes: y (batch, rows), fp32 or bf16.
struct Output {
  void* data;
  ValueType type;
  int64_t rows;  // y's row length
};

// 16 fp32 to bf16 as float_to_bf16 converts them: rounded to nearest even, NaN to 0xffff (as torch).
inline __m256i bf16_of(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0xffff)));
}

// y[b][n0 + i] = tile[i][j] + bias[n0 + i] for batch entry b = b0 + j: a register transposition per
// whole 16 x 16 tile (for bf16 into a buffer, then rounded row by row), element by element at the
// edges (batch or rows not a multiple of 16). Writing bf16 here spares the caller a pass over y.
void store_tile_transposed(float (&tile)[kTileRows][kTileRows], int64_t b0, int64_t n0, int64_t row_end, int64_t batch,
                           const float* bias, const Output& y) {
  if (bias) {
    for (int64_t i = 0; i < kTileRows && n0 + i < row_end; ++i) {
      _mm512_store_ps(tile[i], _mm512_add_ps(_mm512_load_ps(tile[i]), _mm512_set1_ps(bias[n0 + i])));
    }
  }
  float* y32 = static_cast<float*>(y.data);
  uint16_t* y16 = static_cast<uint16_t*>(y.data);
  const bool bf16 = y.type == ValueType::kBFloat16;
  if (b0 + kTileRows <= batch && n0 + kTileRows <= row_end) {
    if (!bf16) {
      transpose_tile(&tile[0][0], y.rows, kTileRows, y32 + b0 * y.rows + n0, 0, 0);
      return;
    }
    alignas(64) float transposed[kTileRows][kTileRows];
    transpose_tile(&tile[0][0], kTileRows, kTileRows, &transposed[0][0], 0, 0);
    for (int64_t j = 0; j < kTileRows; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y16 + (b0 + j) * y.rows + n0),
                          bf16_of(_mm512_load_ps(transposed[j])));
    }
    return;
  }
  for (int64_t j = 0; j < kTileRows && b0 + j < batch; ++j) {
    for (int64_t i = 0; i < kTileRows && n0 + i < row_end; ++i) {
      const int64_t at = (b0 + j) * y.rows + n0 + i;
      if (bf16) {
        y16[at] = float_to_bf16(tile[i][j]);
      } else {
        y32[at] = tile[i][j];
      }
    }
  }
}

// C tiles for weight rows [n0, n0 + 32) and batch tiles bt (and bt + 1 when kPair) over the
// panel's chunks [chunk_begin, chunk_begin + width). C starts at zero in the first k-block and
// from the parked partial sums in the others; it is parked again after every k-block but the
// last, which writes y = C + bias for the rows and batch entries that exist.
template <bool kPair>
void multiply_panel(const uint16_t* panel, const uint16_t* packed_x, int64_t chunk_begin, int64_t width,
                    bool first_block, bool last_block, const PartialSums& partial, int64_t batch_tiles, int64_t bt,
                    int64_t n0, int64_t row_end, int64_t batch, const float* bias, const Output& y) {
  const int64_t partial_stride = partial.stride * int64_t(sizeof(float));
  if (first_block) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, partial.at(n0, bt), partial_stride);
    _tile_loadd(2, partial.at(n0 + kTileRows, bt), partial_stride);
    if (kPair) {
      _tile_loadd(1, partial.at(n0, bt + 1), partial_stride);
      _tile_loadd(3, partial.at(n0 + kTileRows, bt + 1), partial_stride);
    }
  }
  const int64_t a_stride = panel_stride(width) * int64_t(sizeof(uint16_t));
  const char* b = reinterpret_cast<const char*>(packed_x);
  for (int64_t c = 0; c < width; ++c) {
    const uint16_t* a_chunk = panel + c * kChunk;
    const char* b_chunk = b + ((chunk_begin + c) * batch_tiles + bt) * kTileBytes;
    _tile_loadd(4, a_chunk, a_stride);
    _tile_loadd(5, a_chunk + kTileRows * panel_stride(width), a_stride);
    _tile_loadd(6, b_chunk, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if (kPair) {
      _tile_loadd(7, b_chunk + kTileBytes, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  if (!last_block) {
    _tile_stored(0, partial.at(n0, bt), partial_stride);
    _tile_stored(2, partial.at(n0 + kTileRows, bt), partial_stride);
    if (kPair) {
      _tile_stored(1, partial.at(n0, bt + 1), partial_stride);
      _tile_stored(3, partial.at(n0 + kTileRows, bt + 1), partial_stride);
    }
    return;
  }
  alignas(64) float sums[4][kTileRows][kTileRows];
  _tile_stored(0, sums[0], 64);
  _tile_stored(2, sums[2], 64);
  if (kPair) {
    _tile_stored(1, sums[1], 64);
    _tile_stored(3, sums[3], 64);
  }
  for (int half = 0; half < 2; ++half) {                  // weight tile: rows n0 + 16 half ..
    for (int side = 0; side < (kPair ? 2 : 1); ++side) {  // batch tile bt + side
      store_tile_transposed(sums[2 * half + side], (bt + side) * kTileRows, n0 + half * kTileRows, row_end, batch, bias,
                            y);
    }
  }
}

}  // namespace

bool amx_bf16_usable() {
  static const bool usable = [] {
#if defined(__linux__)
    __builtin_cpu_init();
    unsigned eax, ebx, ecx, edx;
    __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const bool has_amx_bf16 = (edx >> 22) & 1, has_amx_tile = (edx >> 24) & 1;
    if (!has_amx_bf16 || !has_amx_tile || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vbmi2")) {
      return false;
    }
    // Linux hands out the tile data state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return usable;
}

int64_t bitmap_bf16_packed_x_elements_amx(int64_t batch, int64_t k) {
  return ((k + kChunk - 1) / kChunk) * ((batch + kTileRows - 1) / kTileRows) * kTileRows * kChunk;
}

void bitmap_bf16_pack_x_amx(const uint16_t* x, int64_t batch, int64_t k, uint16_t* packed, int64_t chunk_begin,
                            int64_t chunk_end) {
  const int64_t batch_tiles = (batch + kTileRows - 1) / kTileRows;
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t columns = std::min(kChunk, k - c * kChunk);
    for (int64_t bt = 0; bt < batch_tiles; ++bt) {
      uint16_t* tile = packed + (c * batch_tiles + bt) * kTileRows * kChunk;
      const int64_t b0 = bt * kTileRows;
      // B tile row p holds the column pair (2p, 2p + 1) of each of the tile's 16 batch entries: in
      // 32-bit units (pairs) a 16 x 16 transposition, done in registers for whole tiles (an element
      // loop is slow). Rows of x start on a pair only for even k.
      if (k % 2 == 0 && columns == kChunk && b0 + kTileRows <= batch) {
        transpose_tile(reinterpret_cast<const float*>(x + b0 * k + c * kChunk), kTileRows, k / 2,
                       reinterpret_cast<float*>(tile), 0, 0);
        continue;
      }
      std::memset(tile, 0, sizeof(uint16_t) * kTileRows * kChunk);
      for (int64_t b = b0; b < std::min(batch, b0 + kTileRows); ++b) {
        uint16_t* out = tile + 2 * (b - b0);
        const uint16_t* in = x + b * k + c * kChunk;
        for (int64_t col = 0; col < columns; ++col) out[(col / 2) * kChunk + col % 2] = in[col];
      }
    }
  }
}

Status bitmap_bf16_spmm_amx(const BitmapWeightView& weight, const AmxSpmmArgs& args, RowRange range) {
  if (weight.value_type != ValueType::kBFloat16) return Status{StatusCode::kBadArgument, 0, 0};
  const auto* values = static_cast<const uint16_t*>(weight.values);
  const uint16_t* bitmap = weight.bitmap;
  const int64_t* row_offsets = weight.row_offsets;
  const int64_t rows = weight.rows, k = weight.cols, batch = args.batch, row_begin = range.begin, row_end = range.end;
  const uint16_t* packed_x = args.packed_x;
  const float* bias = args.bias;
  if (batch < 1 || k < 1 || !amx_bf16_usable()) return Status{StatusCode::kBadArgument, 0, 0};
  const Output out{args.y, args.y_type, rows};
  const int64_t chunks = (k + kChunk - 1) / kChunk, batch_tiles = (batch + kTileRows - 1) / kTileRows;
  const int64_t block_chunks = std::max<int64_t>(8, kKBlockPackedXBytes / (batch_tiles * kTileBytes));
  // 64-byte aligned: a tile row that straddles two cache lines costs two accesses.
  std::vector<uint16_t> panel_storage(kBlockRows * panel_stride(std::min(chunks, block_chunks)) + 32);
  uint16_t* panel = panel_storage.data() + aligned_offset(panel_storage.data());
  // Each row's position in the value stream at the current k-block (whole panels, so that a
  // panel's rows past row_end have a slot too).
  std::vector<int64_t> cursors((row_end - row_begin + kBlockRows - 1) / kBlockRows * kBlockRows);
  for (int64_t n = row_begin; n < row_end; ++n) cursors[n - row_begin] = row_offsets[n];
  const bool one_block = chunks <= block_chunks;
  std::vector<float> partial_storage(one_block ? 0 : cursors.size() * batch_tiles * kTileRows + 16);
  const PartialSums partial{partial_storage.data() + (one_block ? 0 : aligned_offset(partial_storage.data())),
                            row_begin, batch_tiles * kTileRows};
  load_tile_config();
  Status status;
  for (int64_t c0 = 0; c0 < chunks && status.ok(); c0 += block_chunks) {
    const int64_t c1 = std::min(chunks, c0 + block_chunks);
    const bool first_block = c0 == 0, last_block = c1 == chunks;
    for (int64_t n0 = row_begin; n0 < row_end; n0 += kBlockRows) {
      status =
          expand_panel(values, bitmap, row_offsets, k, n0, row_end, c0, c1, cursors.data() + (n0 - row_begin), panel);
      if (!status.ok()) break;
      int64_t bt = 0;
      for (; bt + 2 <= batch_tiles; bt += 2) {
        multiply_panel<true>(panel, packed_x, c0, c1 - c0, first_block, last_block, partial, batch_tiles, bt, n0,
                             row_end, batch, bias, out);
      }
      if (bt < batch_tiles) {
        multiply_panel<false>(panel, packed_x, c0, c1 - c0, first_block, last_block, partial, batch_tiles, bt, n0,
                              row_end, batch, bias, out);
      }
    }
  }
  _tile_release();
  return status;
}

}  // namespace prunekit::cpu
