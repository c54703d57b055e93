// The 2:4 compressed format shared by the CPU and CUDA kernels (torch-free).
//
// A dense (rows, k) matrix in which every group of 4 consecutive entries of a row holds at most
// two nonzeros is stored as
//   values (rows, k/2): the two kept entries of each group, in column order;
//   meta   (rows, k/(4*G)) of int16 (G = 4 groups per element) or int32 (int8 data, G = 8):
//          one nibble per group, idx0 | idx1 << 2 (idx0 < idx1, the kept columns in the group),
//          element j holding groups j*G .. j*G+G-1 from the low nibble up, and the elements
//          scattered into the ColumnMajorInterleaved<2> order of CUTLASS's sparse GEMM.
// This is bit for bit the layout of torch.sparse._semi_structured_conversions
// (sparse_semi_structured_from_dense_cutlass) for fp16, bf16 and int8. fp32 uses the 16-bit
// layout over fp32 entries (a true 2:4, as the CPU kernels need); torch's own fp32 layout is the
// 1:2 layout of TF32 sparse tensor cores, which cannot hold every 2:4 matrix.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PRUNEKIT_HD __host__ __device__ __forceinline__
#else
#define PRUNEKIT_HD inline
#endif

namespace prunekit::format24 {

// Layout parameters for one element size (bytes per dense entry: 1, 2 or 4).
struct Layout {
  int meta_bytes;       // 2 (int16) or 4 (int32)
  int groups_per_meta;  // nibbles per meta element
  int row_alignment;    // rows must be a multiple of this (the reorder works on row groups)
  int col_alignment;    // k must be a multiple of this (an even number of meta columns)
};

PRUNEKIT_HD Layout layout_for_element_bytes(int element_bytes) {
  if (element_bytes == 1) return Layout{4, 8, 16, 64};
  return Layout{2, 4, 32, 32};
}

// Nibble for a group from its nonzero flags. Groups with fewer than two nonzeros are padded with
// zero entries exactly as torch encodes them, so metadata stays bit-identical; callers reject
// groups with more than two nonzeros before encoding.
PRUNEKIT_HD uint32_t encode_group(bool nz0, bool nz1, bool nz3) {
  const bool both01 = nz0 && nz1;
  const bool only1 = !nz0 && nz1;
  const bool none01 = !nz0 && !nz1;
  const uint32_t idx0 = uint32_t(only1) | (uint32_t(none01) << 1);
  const uint32_t idx1 = uint32_t(both01 || none01 || nz3) | (uint32_t(only1 || !nz1) << 1);
  return idx0 | (idx1 << 2);
}

// Position in the reordered meta buffer of meta element (row, col) of a rows x meta_cols matrix.
PRUNEKIT_HD int64_t meta_offset(int64_t row, int64_t col, int64_t rows, const Layout& layout) {
  const int64_t group = layout.meta_bytes == 2 ? 32 : 16;
  const int64_t interweave = layout.meta_bytes == 2 ? 4 : 2;
  int64_t dst_row = row / group * group + (row % 8) * interweave + (row % group) / 8;
  int64_t dst_col = col;
  // Swizzle 2x2 blocks: the top-right entry trades places with the bottom-left one.
  if (dst_row % 2 == 0 && dst_col % 2 == 1) {
    ++dst_row;
    --dst_col;
  } else if (dst_row % 2 == 1 && dst_col % 2 == 0) {
    --dst_row;
    ++dst_col;
  }
  return (dst_col / 2) * rows * 2 + dst_row * 2 + dst_col % 2;
}

// Entry bits that count as nonzero: everything but the sign bit for floats, so -0.0 is a zero
// (as in torch's `dense != 0`), and every bit for integers.
template <typename Bits>
PRUNEKIT_HD bool is_nonzero(Bits bits, bool is_float) {
  constexpr Bits sign = Bits(Bits(1) << (sizeof(Bits) * 8 - 1));
  return (is_float ? Bits(bits & Bits(~sign)) : bits) != 0;
}

}  // namespace prunekit::format24
