// 2:4 compression and decompression, scalar reference kernels (one row at a time).
#include <cstdint>

#include "prunekit/format24.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

using format24::Layout;

template <typename Bits, typename Meta>
Status compress_rows(const Bits* dense, Bits* values, Meta* meta, int64_t rows, int64_t k, bool is_float,
                     int64_t row_begin, int64_t row_end) {
  const Layout layout = format24::layout_for_element_bytes(sizeof(Bits));
  const int64_t meta_cols = k / (4 * layout.groups_per_meta);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const Bits* in = dense + row * k;
    Bits* out = values + row * (k / 2);
    for (int64_t meta_col = 0; meta_col < meta_cols; ++meta_col) {
      uint32_t word = 0;
      for (int g = 0; g < layout.groups_per_meta; ++g) {
        const int64_t col = (meta_col * layout.groups_per_meta + g) * 4;
        const Bits* q = in + col;
        const bool nz0 = format24::is_nonzero(q[0], is_float);
        const bool nz1 = format24::is_nonzero(q[1], is_float);
        const bool nz2 = format24::is_nonzero(q[2], is_float);
        const bool nz3 = format24::is_nonzero(q[3], is_float);
        if (int(nz0) + int(nz1) + int(nz2) + int(nz3) > 2) {
          return Status{StatusCode::kTooManyNonzeros, row, col};
        }
        const uint32_t nibble = format24::encode_group(nz0, nz1, nz3);
        out[col / 2] = q[nibble & 3u];
        out[col / 2 + 1] = q[(nibble >> 2) & 3u];
        word |= nibble << (4 * g);
      }
      meta[format24::meta_offset(row, meta_col, rows, layout)] = Meta(word);
    }
  }
  return Status{};
}

template <typename Bits, typename Meta>
Status decompress_rows(const Bits* values, const Meta* meta, Bits* dense, int64_t rows, int64_t k, int64_t row_begin,
                       int64_t row_end) {
  const Layout layout = format24::layout_for_element_bytes(sizeof(Bits));
  const int64_t meta_cols = k / (4 * layout.groups_per_meta);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const Bits* in = values + row * (k / 2);
    Bits* out = dense + row * k;
    for (int64_t meta_col = 0; meta_col < meta_cols; ++meta_col) {
      const uint32_t word = uint32_t(meta[format24::meta_offset(row, meta_col, rows, layout)]);
      for (int g = 0; g < layout.groups_per_meta; ++g) {
        const int64_t col = (meta_col * layout.groups_per_meta + g) * 4;
        const uint32_t nibble = (word >> (4 * g)) & 0xfu;
        const uint32_t idx0 = nibble & 3u, idx1 = nibble >> 2;
        if (idx0 >= idx1) return Status{StatusCode::kCorruptMeta, row, col};
        Bits* q = out + col;
        q[0] = q[1] = q[2] = q[3] = Bits(0);
        q[idx0] = in[col / 2];
        q[idx1] = in[col / 2 + 1];
      }
    }
  }
  return Status{};
}

}  // namespace

Status format24_compress_scalar(const void* dense, void* values, void* meta, int64_t rows, int64_t k, int element_bytes,
                                bool is_float, RowRange range) {
  const int64_t row_begin = range.begin, row_end = range.end;
  switch (element_bytes) {
    case 1:
      return compress_rows(static_cast<const uint8_t*>(dense), static_cast<uint8_t*>(values),
                           static_cast<uint32_t*>(meta), rows, k, is_float, row_begin, row_end);
    case 2:
      return compress_rows(static_cast<const uint16_t*>(dense), static_cast<uint16_t*>(values),
                           static_cast<uint16_t*>(meta), rows, k, is_float, row_begin, row_end);
    default:
      return compress_rows(static_cast<const uint32_t*>(dense), static_cast<uint32_t*>(values),
                           static_cast<uint16_t*>(meta), rows, k, is_float, row_begin, row_end);
  }
}

Status format24_decompress_scalar(const void* values, const void* meta, void* dense, int64_t rows, int64_t k,
                                  int element_bytes, RowRange range) {
  const int64_t row_begin = range.begin, row_end = range.end;
  switch (element_bytes) {
    case 1:
      return decompress_rows(static_cast<const uint8_t*>(values), static_cast<const uint32_t*>(meta),
                             static_cast<uint8_t*>(dense), rows, k, row_begin, row_end);
    case 2:
      return decompress_rows(static_cast<const uint16_t*>(values), static_cast<const uint16_t*>(meta),
                             static_cast<uint16_t*>(dense), rows, k, row_begin, row_end);
    default:
      return decompress_rows(static_cast<const uint32_t*>(values), static_cast<const uint16_t*>(meta),
                             static_cast<uint32_t*>(dense), rows, k, row_begin, row_end);
  }
}

}  // namespace prunekit::cpu
