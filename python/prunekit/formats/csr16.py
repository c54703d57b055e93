"""CSR16: CSR with 16-bit column indices, the batch-1 CPU format at high sparsity.

Bytes per weight: (1 - sparsity) * (element_bytes + 2), plus 8 bytes per row of offsets: a little
more than the bitmap format at 90% (fp32: 0.60 vs 0.53 bytes per weight), but its GEMV costs one
load of x and one multiply-add per nonzero, where the bitmap GEMV expands every 16-column word
whether it holds one nonzero or sixteen. The values are packed exactly as in the bitmap format,
so the two formats share them (:meth:`Csr16Weight.from_bitmap` copies only the index).

Modules build a CSR16 index beside their bitmap weight at run time (see
:mod:`prunekit.nn.auto`); the "csr16" storage (state and checkpoint entry ``values``,
``col_indices``, ``row_offsets``) is for checkpoints that keep a weight in its smallest format.
"""

from dataclasses import dataclass

import torch

from .._names import dtype_name
from .base import State, WeightFormat, register
from .bitmap import DTYPES, BitmapWeight, bitmap_mask, check_bitmap_tensors

MAX_COLUMNS = 1 << 16


@dataclass(frozen=True)
class Csr16Weight:
    """A (rows, cols) weight in CSR16 (tensors as ``prunekit.ops.sparse_linear_csr16`` takes them)."""

    values: torch.Tensor  # (nnz,) fp32 or bf16 (the kernels) or fp16, row by row in column order
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
        check_bitmap_tensors("Csr16Weight.from_bitmap", weight.bitmap, weight.row_offsets, weight.values, weight.cols)
        return cls(weight.values, column_indices(weight.bitmap, weight.cols), weight.row_offsets, weight.cols)

    def validate(self, owner: str = "Csr16Weight") -> "Csr16Weight":
        """Checks the tensors against each other and the format's rules: offsets from 0 to nnz, never
        decreasing; one index per value, below cols; strictly increasing columns within each row (the
        op itself checks all but the order, and would sum a repeated column). ValueError naming
        ``owner``; returns self."""
        rows, cols = self.shape
        for key, tensor, dtype in (("row_offsets", self.row_offsets, torch.int64),
                                   ("col_indices", self.col_indices, torch.int16)):
            if tensor.dtype != dtype or tensor.dim() != 1:
                raise ValueError(f"{owner}: '{key}' must be 1-D {dtype_name(dtype)}, but got "
                                 f"{dtype_name(tensor.dtype)} of shape {tuple(tensor.shape)}")
        if self.values.dim() != 1:
            raise ValueError(f"{owner}: 'values' must be 1-D, but got shape {tuple(self.values.shape)}")
        nnz = self.values.numel()
        offsets = self.row_offsets
        if rows < 1:
            raise ValueError(f"{owner}: 'row_offsets' must have rows + 1 >= 2 entries, but got {offsets.numel()}")
        if not 1 <= cols <= MAX_COLUMNS:
            raise ValueError(f"{owner}: cols must be in [1, {MAX_COLUMNS}] (16-bit column indices), but got {cols}")
        if int(offsets[0]) != 0 or int(offsets[-1]) != nnz:
            raise ValueError(f"{owner}: 'row_offsets' must start at 0 and end at values.numel()={nnz}, but got "
                             f"{offsets[:1].tolist()} ... {offsets[-1:].tolist()}")
        decreasing = (torch.diff(offsets) < 0).nonzero()
        if len(decreasing):
            raise ValueError(f"{owner}: 'row_offsets' must be non-decreasing, but entry {int(decreasing[0]) + 1} is "
                             f"below entry {int(decreasing[0])}")
        if self.col_indices.numel() != nnz:
            raise ValueError(f"{owner}: 'col_indices' must have one entry per value ({nnz}), but got "
                             f"{self.col_indices.numel()}")
        columns = self.col_indices.long() & 0xFFFF
        row_of_value = torch.repeat_interleave(torch.arange(rows, device=columns.device), torch.diff(offsets))
        past = (columns >= cols).nonzero()
        if len(past):
            i = int(past[0])
            raise ValueError(f"{owner}: row {int(row_of_value[i])} of 'col_indices' names column {int(columns[i])}, "
                             f"past cols={cols}")
        unordered = ((torch.diff(columns) <= 0) & (torch.diff(row_of_value) == 0)).nonzero()
        if len(unordered):
            i = int(unordered[0])
            raise ValueError(f"{owner}: the columns of each row must be strictly increasing, but row "
                             f"{int(row_of_value[i])} has {int(columns[i])} then {int(columns[i + 1])}")
        return self

    def to_dense(self) -> torch.Tensor:
        self.validate()
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
    return bitmap_mask(bitmap, cols).nonzero()[:, 1].to(torch.int32).to(torch.int16)


class Csr16Format(WeightFormat):
    """The "csr16" storage (see the module docstring); no module holds it yet."""

    name = "csr16"
    state_names = ("values", "col_indices", "row_offsets")
    checkpoint_names = ("values", "col_indices", "row_offsets")  # offsets: the index alone cannot give them

    def compress(self, matrix: torch.Tensor, owner: str, weight_shape=None) -> State:
        if matrix.dtype not in DTYPES:
            raise ValueError(f"{owner}: format='csr16' holds float32, bfloat16 or float16 weights, but the weight is "
                             f"{dtype_name(matrix.dtype)}")
        if not 1 <= matrix.shape[1] <= MAX_COLUMNS:
            raise ValueError(f"{owner}: format='csr16' holds 1 to {MAX_COLUMNS} columns (16-bit column indices), but "
                             f"the weight has {matrix.shape[1]}")
        weight = Csr16Weight.from_dense(matrix.detach())
        device = matrix.device
        return {"values": weight.values.to(device), "col_indices": weight.col_indices.to(device),
                "row_offsets": weight.row_offsets.to(device)}

    def to_dense(self, state: State, rows: int, cols: int) -> torch.Tensor:
        return Csr16Weight(state["values"], state["col_indices"], state["row_offsets"], cols).to_dense()

    def checkpoint_nbytes(self, rows, cols, dtype, nonzeros, is_24):
        if dtype not in DTYPES or not 1 <= cols <= MAX_COLUMNS:
            return None
        return nonzeros * (dtype.itemsize + 2) + (rows + 1) * 8  # values, int16 indices, int64 offsets

    def expected_state(self, rows, cols, dtype, state, weight_shape=None):
        shapes = {"row_offsets": ((rows + 1,), torch.int64)}
        offsets = state.get("row_offsets")
        if (isinstance(offsets, torch.Tensor) and offsets.dtype == torch.int64 and tuple(offsets.shape) == (rows + 1,)
                and offsets.device.type != "meta"):
            nnz = int(offsets[-1])
            shapes.update(values=((nnz,), dtype), col_indices=((nnz,), torch.int16))
        return shapes

    def check_consistency(self, owner: str, state: State, rows: int, cols: int) -> None:
        if state["values"].device.type == "cpu":  # elsewhere the comparison would cost device syncs
            Csr16Weight(state["values"], state["col_indices"], state["row_offsets"], cols).validate(owner)


CSR16 = register(Csr16Format())
