// The 2:4 metadata layout of prunekit's Hopper (sm90a) sparse GEMM, and its exact conversion from
// the torch / CUTLASS 2.x layout of prunekit/format24.h (torch-free, host and device).
//
// CUTLASS 3.x describes the sm90 metadata of 16-bit data (fp16, bf16) as a CuTe layout over
// logical elements of A, one metadata bit per logical element (cutlass::Sm90GemmSparseConfig,
// TensorEAtom_16bit): an atom of 64 rows x 128 columns
//     ((8,2,4),(16,2,NumK)) : ((32*NumK,16,512*NumK),(1,256*NumK,32))   NumK = min(TileK,128)/32
// stacked first down the rows, then along k (row count rounded up to 64, k up to 128). The
// prunekit sm90 GEMMs all use TileK = 128 (NumK = 4), which fixes the layout:
//     atom:  ((8,2,4),(16,2,4)) : ((128,16,2048),(1,1024,32))
//     whole: atom + (row / 64) * 8192 + (k / 128) * (rows_aligned * 128)
// Bit i of the buffer holds logical index i, so the 4-bit code of the group at columns
// 4g..4g+3 is nibble (index % 8) / 4 of byte index / 8, and the four codes of one torch meta
// element (16 consecutive columns, innermost mode of stride 1) form one aligned 16-bit word with
// the same bit order: the conversion moves whole int16 words. The codes mean the same for both
// (idx0 | idx1 << 2, the two kept columns of the group). Padding (rows past `rows`, columns past
// k) is zero, as CUTLASS's own compressor leaves it.
#pragma once

#include <cstdint>

#include "prunekit/format24.h"

namespace prunekit::format24::sm90 {

constexpr int64_t kAtomRows = 64;   // logical rows of one metadata atom
constexpr int64_t kAtomCols = 128;  // logical columns of one metadata atom (= the GEMMs' TileK)
constexpr int64_t kWordCols = 16;   // logical columns of one 16-bit word (= one torch meta element)

PRUNEKIT_HD int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// Rows and logical columns the sm90 metadata buffer covers (padded to whole atoms).
PRUNEKIT_HD int64_t padded_rows(int64_t rows) { return round_up(rows, kAtomRows); }
PRUNEKIT_HD int64_t padded_cols(int64_t k) { return round_up(k, kAtomCols); }

// 16-bit words in the buffer for a (rows, k) matrix; its bytes are padded_rows x padded_cols / 8.
PRUNEKIT_HD int64_t word_count(int64_t rows, int64_t k) { return padded_rows(rows) * padded_cols(k) / kWordCols; }

// Word index of the codes of columns 16*word_col .. 16*word_col+15 of `row` (word_col is the
// column of the torch meta element holding the same four groups); rows_padded = padded_rows(rows).
PRUNEKIT_HD int64_t word_index(int64_t row, int64_t word_col, int64_t rows_padded) {
  const int64_t m0 = row % 8, m1 = (row / 8) % 2, m2 = (row / 16) % 4, m_block = row / kAtomRows;
  const int64_t k1 = word_col % 2, k2 = (word_col / 2) % 4, k_block = word_col / 8;
  // The bit index of the word's first column, divided by the 16 bits of a word.
  return m0 * 8 + m1 + m2 * 128 + k1 * 64 + k2 * 2 + m_block * 512 + k_block * rows_padded * 8;
}

// Writes output word `index` (0 <= index < word_count(rows, k)) of the sm90 buffer from the 16-bit
// torch meta (rows, k/16) of 16-bit data; padding words are 0. Each output word is written once,
// from one input word, so any split of the index range over threads is race-free.
PRUNEKIT_HD void convert_word(const uint16_t* torch_meta, uint16_t* sm90_meta, int64_t index, int64_t rows, int64_t k) {
  const int64_t rows_padded = padded_rows(rows);
  // Invert word_index: the atom block along k is outermost, then the row block, then the
  // 512-word atom: m2 (128), k1 (64), m0 (8), k2 (2), m1 (1).
  const int64_t k_block = index / (rows_padded * 8);
  const int64_t in_k_block = index % (rows_padded * 8);
  const int64_t m_block = in_k_block / 512;
  const int64_t in_atom = in_k_block % 512;
  const int64_t m2 = in_atom / 128, k1 = (in_atom / 64) % 2, m0 = (in_atom / 8) % 8;
  const int64_t k2 = (in_atom / 2) % 4, m1 = in_atom % 2;
  const int64_t row = m_block * kAtomRows + m2 * 16 + m1 * 8 + m0;
  const int64_t word_col = k_block * 8 + k2 * 2 + k1;
  const int64_t meta_cols = k / kWordCols;
  if (row >= rows || word_col >= meta_cols) {
    sm90_meta[index] = 0;
    return;
  }
  const Layout layout = layout_for_element_bytes(2);
  sm90_meta[index] = torch_meta[meta_offset(row, word_col, rows, layout)];
}

}  // namespace prunekit::format24::sm90
