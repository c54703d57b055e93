"""CSR16: CSR with 16-bit column indices, the batch-1 CPU format at high sparsity.

Bytes per weight: (1 - sparsity) * (element_bytes + 2), plus 8 bytes per row of offsets: a little
more than the bitmap format at 90% (fp32: 0.60 vs 0.53 bytes per weight), but its GEMV costs one
load of x and one multiply-add per nonzero, where the bitmap GEMV expands every 16-column word
whether it holds one nonzero or sixteen. The values are packed exactly as in the bitmap format,
so the two formats share them (:meth:`Csr16Weight.from_bitmap` copies only the index).
"""

from dataclasses import dataclass

import torch

from .bitmap import BitmapWeight, bitmap_mask

MAX_COLUMNS = 1 << 16


@dataclass(frozen=True)
class Csr16Weight:
    """A (rows, cols) weight in CSR16 (tensors as ``prunekit.ops.sparse_linear_csr16`` takes them)."""

    values: torch.Tensor  # (nnz,) fp32 or bf16, row by row in column order
    col_indices: torch.Tensor  # (nnz,) int16, the column as an unsigned 16-bit number
    row_offsets: torch.Tensor  # (rows + 1,) int64
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row_offsets.numel() - 1, self.cols

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> "Csr16Weight":
        return cls.from_bitmap(BitmapWeight.from_dense(dense))

    @classmethod
    def from_bitmap(cls, weight: BitmapWeight) -> "Csr16Weight":
        """The same weight with column indices instead of the bitmap (values shared, not copied)."""
        return cls(weight.values, column_indices(weight.bitmap, weight.cols), weight.row_offsets, weight.cols)

    def to_dense(self) -> torch.Tensor:
        rows, cols = self.shape
        row_of_value = torch.repeat_interleave(torch.arange(rows, device=self.values.device),
                                               torch.diff(self.row_offsets))
        dense = self.values.new_zeros((rows, cols))
        dense[row_of_value, self.col_indices.long() & 0xFFFF] = self.values
        return dense

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.col_indices, self.row_offsets))


def column_indices(bitmap: torch.Tensor, cols: int) -> torch.Tensor:
    """(nnz,) int16 columns of the marked positions of an int16 bitmap, row by row in column order
    (the order of the bitmap format's values); columns >= 32768 wrap to negative int16."""
    if cols > MAX_COLUMNS:
        raise ValueError(f"column_indices: CSR16 holds at most {MAX_COLUMNS} columns, but the weight has {cols}")
    columns = bitmap_mask(bitmap, cols).nonzero()[:, 1]
    return columns.to(torch.int32).to(torch.int16)
