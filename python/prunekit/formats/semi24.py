"""The 2:4 (semi-structured) layout: values (rows, k/2) plus metadata in torch's CUTLASS order.

The bit-level description is in ``csrc/include/prunekit/format24.h``; this module holds the
shape rules that the Python side (fake impls, references, tests) needs.

For fp16, bf16 and int8 the values and metadata are bit for bit those of
``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``, so a
compressed weight can be handed to ``torch.sparse.SparseSemiStructuredTensorCUTLASS``. fp32 uses
the 16-bit layout over fp32 entries: a true 2:4 format, which the CPU kernels need. (torch's own
fp32 layout is the 1:2 pattern of TF32 sparse tensor cores and cannot hold every 2:4 matrix.)
"""

from dataclasses import dataclass

import torch

from .._names import dtype_name

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.int8, torch.float32)


@dataclass(frozen=True)
class Semi24Layout:
    """Shape rules of the 2:4 layout for one value dtype."""

    meta_dtype: torch.dtype
    groups_per_meta: int  # 4-bit group codes per metadata element
    row_alignment: int  # rows must be a multiple of this
    col_alignment: int  # dense columns must be a multiple of this

    def values_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows, cols // 2

    def meta_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows, cols // (4 * self.groups_per_meta)


def semi24_layout(dtype: torch.dtype) -> Semi24Layout:
    """The layout for values of ``dtype`` (fp16, bf16, int8 or fp32)."""
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(dtype_name(d) for d in SUPPORTED_DTYPES)
        raise ValueError(f"2:4 layout: dtype must be one of ({names}), but got {dtype}")
    if dtype == torch.int8:
        return Semi24Layout(torch.int32, 8, 16, 64)
    return Semi24Layout(torch.int16, 4, 32, 32)


def meta_offsets(rows: int, meta_cols: int, meta_bytes: int) -> torch.Tensor:
    """Flat position in CUTLASS's ColumnMajorInterleaved<2> order of each (row, col) meta entry."""
    row = torch.arange(rows).unsqueeze(1).expand(rows, meta_cols)
    col = torch.arange(meta_cols).unsqueeze(0).expand(rows, meta_cols)
    group, interweave = (32, 4) if meta_bytes == 2 else (16, 2)
    dst_row = row // group * group + (row % 8) * interweave + (row % group) // 8
    # Swizzle 2x2 blocks: top-right and bottom-left entries trade places.
    top_right = (dst_row % 2 == 0) & (col % 2 == 1)
    bottom_left = (dst_row % 2 == 1) & (col % 2 == 0)
    shift = top_right.long() - bottom_left.long()
    dst_row = dst_row + shift
    dst_col = col - shift
    return (dst_col // 2) * rows * 2 + dst_row * 2 + dst_col % 2
