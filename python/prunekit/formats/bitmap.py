"""The CPU sparse weight format: a bitmap of nonzero positions plus the packed nonzeros.

Bytes per weight: (1 - sparsity) * element_bytes + 1/8 (the bitmap), plus 8 bytes per row of
offsets. This beats CSR at every sparsity for batch-1 inference, which streams the weight once
(CSR with 32-bit indices costs (1 - s) * (b + 4)). A 2:4 weight is stored the same way with
exactly two marked positions per group of four (see :func:`from_semi24`), which the kernels
expand in registers; :func:`to_semi24` converts back to torch's CUTLASS layout exactly.
"""

from dataclasses import dataclass

import torch

from .._names import dtype_name
from .semi24 import meta_offsets, semi24_layout


@dataclass(frozen=True)
class BitmapWeight:
    """A (rows, cols) weight in the bitmap format (tensors as the prunekit ops take them)."""

    values: torch.Tensor  # (nnz,) fp32 or bf16
    bitmap: torch.Tensor  # (rows, ceil(cols / 16)) int16
    row_offsets: torch.Tensor  # (rows + 1,) int64
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bitmap.shape[0], self.cols

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> "BitmapWeight":
        values, bitmap, row_offsets = torch.ops.prunekit.compress_bitmap(dense.contiguous())
        return cls(values, bitmap, row_offsets, dense.shape[1])

    def to_dense(self) -> torch.Tensor:
        return torch.ops.prunekit.decompress_bitmap(self.values, self.bitmap, self.row_offsets, self.cols)

    def validate(self) -> "BitmapWeight":
        """Checks the tensors against each other (see :func:`check_bitmap_tensors`). Returns self."""
        check_bitmap_tensors("BitmapWeight", self.bitmap, self.row_offsets, self.values, self.cols)
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.bitmap, self.row_offsets))


def from_semi24(values: torch.Tensor, meta: torch.Tensor) -> BitmapWeight:
    """Exact conversion of torch's CUTLASS 2:4 layout (from ``compress_24``) to the CPU format.

    The CUTLASS values (two per group, zero padding included) are kept as they are, in the same
    order; the bitmap marks the two positions each group's metadata names. fp32 and bf16 only.
    """
    if values.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"from_semi24: values must be float32 or bfloat16, but got {values.dtype}")
    if values.dim() != 2:
        raise ValueError(f"from_semi24: values must be 2-D (rows, in_features / 2), but got shape {list(values.shape)}")
    rows, half = values.shape
    cols = 2 * half
    layout = semi24_layout(values.dtype)
    if rows % layout.row_alignment or cols % layout.col_alignment:
        raise ValueError(f"from_semi24: values must have a multiple of {layout.row_alignment} rows and of "
                         f"{layout.col_alignment // 2} columns (compress_24's layout), but got shape {list(values.shape)}")
    if meta.dtype != layout.meta_dtype:
        raise ValueError(f"from_semi24: meta must have dtype {layout.meta_dtype} (as compress_24 returns it), "
                         f"but got {meta.dtype}")
    if tuple(meta.shape) != layout.meta_shape(rows, cols):
        raise ValueError(f"from_semi24: meta must have shape {list(layout.meta_shape(rows, cols))} for values of "
                         f"shape {list(values.shape)}, but got {list(meta.shape)}")
    positions = _semi24_positions(meta, rows, cols, values.dtype)  # (rows, cols/4, 2) column indices
    ascending = positions[..., 0] < positions[..., 1]
    if not bool(ascending.all()):
        row, group = (int(i) for i in (~ascending).nonzero()[0])
        raise ValueError(f"from_semi24: meta must encode two distinct ascending columns per group, but the group at "
                         f"row {row}, columns {4 * group}..{4 * group + 3} does not (corrupt or foreign metadata)")
    marked = torch.zeros(rows, cols, dtype=torch.bool)
    marked.scatter_(1, positions.reshape(rows, -1), True)
    words = (cols + 15) // 16
    bits = (marked.reshape(rows, words, 16).long() << torch.arange(16)).sum(-1)
    bitmap = torch.where(bits >= 2**15, bits - 2**16, bits).to(torch.int16)
    row_offsets = torch.arange(rows + 1, dtype=torch.int64) * half
    return BitmapWeight(values.contiguous().reshape(-1), bitmap, row_offsets, cols)


def to_semi24(weight: BitmapWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact conversion back to torch's CUTLASS 2:4 layout; a weight with other than two marked
    positions per group of four is not a 2:4 weight and raises."""
    rows, cols = weight.shape
    counts = torch.diff(weight.row_offsets)
    if cols % 4 or not bool((counts == cols // 2).all()):
        raise ValueError("to_semi24: the weight must mark exactly 2 of every 4 columns (a from_semi24 weight)")
    marked = bitmap_mask(weight.bitmap, cols)
    if not bool((marked.reshape(rows, -1, 4).sum(-1) == 2).all()):
        raise ValueError("to_semi24: the weight must mark exactly 2 of every 4 columns (a from_semi24 weight)")
    values = weight.values.reshape(rows, cols // 2)
    _, meta = torch.ops.prunekit.compress_24(_placeholder_pattern(marked, weight.values.dtype))
    return values, meta


def bitmap_mask(bitmap: torch.Tensor, cols: int) -> torch.Tensor:
    """(rows, cols) bool mask of the positions an int16 bitmap marks; any device."""
    rows = bitmap.shape[0]
    shifts = torch.arange(16, device=bitmap.device, dtype=torch.int32)
    bits = (bitmap.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(rows, -1)[:, :cols].bool()


def _placeholder_pattern(marked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A matrix whose nonzeros are exactly the marked positions, so compress_24 reproduces the
    metadata of those positions (metadata depends only on which positions are nonzero)."""
    return marked.to(dtype)


def _semi24_positions(meta: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    layout = semi24_layout(dtype)
    meta_cols = meta.shape[1]
    meta_bytes = meta.element_size()
    words = meta.reshape(-1)[meta_offsets(rows, meta_cols, meta_bytes).reshape(-1)].long()
    words = words & (2 ** (8 * meta_bytes) - 1)
    shifts = 4 * torch.arange(layout.groups_per_meta)
    codes = ((words.reshape(rows, meta_cols, 1) >> shifts) & 0xF).reshape(rows, cols // 4)
    base = 4 * torch.arange(cols // 4)
    return torch.stack((base + (codes & 3), base + (codes >> 2)), dim=-1)


_POPCOUNT16: dict[torch.device, torch.Tensor] = {}


def _popcount16(device: torch.device) -> torch.Tensor:
    """Set bits of every 16-bit value, int64 (built once per device)."""
    if device not in _POPCOUNT16:
        values = torch.arange(1 << 16, dtype=torch.int32)
        count = torch.zeros_like(values)
        for bit in range(16):
            count += (values >> bit) & 1
        _POPCOUNT16[device] = count.to(device, torch.int64)
    return _POPCOUNT16[device]


def bitmap_row_counts(bitmap: torch.Tensor) -> torch.Tensor:
    """Marked positions per row of an int16 bitmap, int64; any device."""
    return _popcount16(bitmap.device)[bitmap.to(torch.int32) & 0xFFFF].sum(-1)


def row_offsets_from_bitmap(bitmap: torch.Tensor) -> torch.Tensor:
    """The row offsets a bitmap implies: the running count of its marks, from 0."""
    counts = bitmap_row_counts(bitmap)
    return torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))


def check_bitmap_tensors(owner: str, bitmap: torch.Tensor, row_offsets: torch.Tensor, values: torch.Tensor,
                         cols: int) -> None:
    """Checks a bitmap weight's tensors against each other (ValueError naming ``owner``): one offset
    per row of the bitmap plus one, each the running count of the bitmap's marks, the last equal to
    values.numel(), and no mark past ``cols``. Any device (the tensors are compared where they are)."""
    words = (cols + 15) // 16
    if bitmap.dtype != torch.int16 or bitmap.dim() != 2 or bitmap.shape[1] != words:
        raise ValueError(f"{owner}: the bitmap weight is corrupt: 'bitmap' must be int16 of shape (rows, {words}) "
                         f"for cols={cols}, but got {dtype_name(bitmap.dtype)} of shape "
                         f"{tuple(bitmap.shape)}")
    if row_offsets.dtype != torch.int64:
        raise ValueError(f"{owner}: the bitmap weight is corrupt: 'row_offsets' must be int64, but got "
                         f"{dtype_name(row_offsets.dtype)}")
    if values.dim() != 1:
        raise ValueError(f"{owner}: the bitmap weight is corrupt: 'values' must be 1-D, but got shape "
                         f"{tuple(values.shape)}")
    tail = words * 16 - cols
    if tail and bool(((bitmap[:, -1].to(torch.int32) & 0xFFFF) >> (16 - tail)).any()):
        raise ValueError(f"{owner}: the bitmap weight is corrupt: 'bitmap' marks columns past cols={cols}")
    expected = row_offsets_from_bitmap(bitmap)
    if row_offsets.shape != expected.shape:
        raise ValueError(f"{owner}: the bitmap weight is corrupt: 'row_offsets' must have {expected.numel()} entries "
                         f"(rows of 'bitmap' + 1), but got shape {tuple(row_offsets.shape)}")
    offsets = row_offsets.to(expected.device)
    if not torch.equal(expected, offsets):
        row = int((expected != offsets).nonzero()[0])
        raise ValueError(f"{owner}: the bitmap weight is corrupt: 'row_offsets'[{row}] must be {int(expected[row])} "
                         f"(marks of 'bitmap' in the rows before it), but got {int(offsets[row])}")
    if values.numel() != int(expected[-1]):
        raise ValueError(f"{owner}: the bitmap weight is corrupt: 'values' must hold {int(expected[-1])} entries "
                         f"(marks of 'bitmap'), but got {values.numel()}")
