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
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise ValueError(f"2:4 layout: dtype must be one of ({names}), but got {dtype}")
    if dtype == torch.int8:
        return Semi24Layout(torch.int32, 8, 16, 64)
    return Semi24Layout(torch.int16, 4, 32, 32)
