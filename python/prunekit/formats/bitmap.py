"""The CPU sparse weight format: a bitmap of nonzero positions plus the packed nonzeros
("unstructured" in modules and checkpoints).

Bytes per weight: (1 - sparsity) * element_bytes + 1/8 (the bitmap), plus 8 bytes per row of
offsets. This beats CSR at every sparsity for batch-1 inference, which streams the weight once
(CSR with 32-bit indices costs (1 - s) * (b + 4)). A 2:4 weight is stored the same way with
exactly two marked positions per group of four (:func:`prunekit.formats.from_semi24`), which the
kernels expand in registers.

Module state: ``values`` (nnz,) packed nonzeros row by row, ``bitmap`` (rows, ceil(cols / 16))
int16, ``row_offsets`` (rows + 1,) int64. A checkpoint stores ``values`` and ``bitmap``: the
offsets are the running count of the bitmap's marks, recomputed on load.
"""

from dataclasses import dataclass

import torch

from .._names import dtype_name
from .base import State, WeightFormat, register

# The conversion ops take fp32 and bf16; fp16 goes through them as bf16 bits (see _as_kernel_dtype).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _as_kernel_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 bits seen as bf16, so the fp32/bf16 bitmap conversion ops handle fp16 exactly: both
    formats encode +-0 as 0x0000/0x8000, so the zero test and the copied bits are the same."""
    return tensor.view(torch.bfloat16) if tensor.dtype == torch.float16 else tensor


@dataclass(frozen=True)
class BitmapWeight:
    """A (rows, cols) weight in the bitmap format (tensors as the prunekit ops take them)."""

    values: torch.Tensor  # (nnz,) fp32, bf16 (the kernels) or fp16
    bitmap: torch.Tensor  # (rows, ceil(cols / 16)) int16
    row_offsets: torch.Tensor  # (rows + 1,) int64
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bitmap.shape[0], self.cols

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> "BitmapWeight":
        """The bitmap weight of a 2-D fp32, bf16 or fp16 matrix (on the CPU, where the op runs)."""
        if dense.dtype not in DTYPES or dense.dim() != 2:
            raise ValueError(f"BitmapWeight.from_dense: argument 'dense' must be a 2-D float32, bfloat16 or float16 "
                             f"matrix, but got {dtype_name(dense.dtype)} of shape {tuple(dense.shape)}")
        values, bitmap, row_offsets = torch.ops.prunekit.compress_bitmap(_as_kernel_dtype(dense.cpu().contiguous()))
        return cls(values.view(dense.dtype), bitmap, row_offsets, dense.shape[1])

    def to_dense(self) -> torch.Tensor:
        """The (rows, cols) matrix, exactly, on the tensors' device: the ``decompress_bitmap`` op
        on the CPU (which checks the tensors), plain torch elsewhere and for other dtypes."""
        if self.values.device.type == "cpu" and self.values.dtype in DTYPES:
            dense = torch.ops.prunekit.decompress_bitmap(_as_kernel_dtype(self.values), self.bitmap, self.row_offsets,
                                                         self.cols)
            return dense.view(self.values.dtype)
        return bitmap_to_dense(self.values, self.bitmap, self.cols)

    def validate(self) -> "BitmapWeight":
        """Checks the tensors against each other (see :func:`check_bitmap_tensors`). Returns self."""
        check_bitmap_tensors("BitmapWeight", self.bitmap, self.row_offsets, self.values, self.cols)
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.bitmap, self.row_offsets))


def bitmap_mask(bitmap: torch.Tensor, cols: int) -> torch.Tensor:
    """(rows, cols) bool mask of the positions an int16 bitmap marks; any device."""
    rows = bitmap.shape[0]
    shifts = torch.arange(16, device=bitmap.device, dtype=torch.int32)
    bits = (bitmap.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(rows, bitmap.shape[1] * 16)[:, :cols].bool()


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


def bitmap_to_dense(values: torch.Tensor, bitmap: torch.Tensor, cols: int) -> torch.Tensor:
    """Exact bitmap -> dense expansion in plain torch, for any device and dtype (the op
    ``decompress_bitmap`` is CPU only)."""
    mask = bitmap_mask(bitmap, cols)
    marked = int(mask.sum())
    if values.dim() != 1 or values.numel() != marked:
        raise ValueError(f"bitmap_to_dense: the bitmap weight is corrupt: 'values' must be 1-D with {marked} entries "
                         f"(marks of 'bitmap'), but got shape {tuple(values.shape)}")
    dense = values.new_zeros((bitmap.shape[0], cols))
    dense[mask] = values
    return dense


class BitmapFormat(WeightFormat):
    """The "unstructured" format (see the module docstring)."""

    name = "unstructured"
    state_names = ("values", "bitmap", "row_offsets")
    checkpoint_names = ("values", "bitmap")  # row_offsets: the running count of the bitmap's marks
    view_is_state = True

    def compress(self, matrix: torch.Tensor, owner: str, weight_shape=None) -> State:
        if matrix.dtype not in DTYPES:
            raise ValueError(f"{owner}: format='unstructured' holds float32, bfloat16 or float16 weights, but the "
                             f"weight is {dtype_name(matrix.dtype)}; convert the module first or use format='dense'")
        weight = BitmapWeight.from_dense(matrix.detach())
        device = matrix.device
        return {"values": weight.values.to(device), "bitmap": weight.bitmap.to(device),
                "row_offsets": weight.row_offsets.to(device)}

    def to_dense(self, state: State, rows: int, cols: int) -> torch.Tensor:
        return self.kernel_view(state, cols).to_dense()

    def checkpoint_nbytes(self, rows, cols, dtype, nonzeros, is_24):
        if dtype not in DTYPES:
            return None
        return nonzeros * dtype.itemsize + rows * ((cols + 15) // 16) * 2  # values + int16 bitmap

    def expected_state(self, rows, cols, dtype, state, weight_shape=None):
        words = (cols + 15) // 16
        shapes = {"bitmap": ((rows, words), torch.int16), "row_offsets": ((rows + 1,), torch.int64)}
        offsets = state.get("row_offsets")
        # values' length is the last offset; readable only from offsets of the right kind
        if (isinstance(offsets, torch.Tensor) and offsets.dtype == torch.int64 and tuple(offsets.shape) == (rows + 1,)
                and offsets.device.type != "meta"):
            shapes["values"] = ((int(offsets[-1]),), dtype)
        return shapes

    def check_consistency(self, owner: str, state: State, rows: int, cols: int) -> None:
        if state["bitmap"].device.type == "cpu":  # elsewhere the comparison would cost device syncs
            check_bitmap_tensors(owner, state["bitmap"], state["row_offsets"], state["values"], cols)

    def from_checkpoint(self, stored: State, owner: str) -> State:
        state = super().from_checkpoint(stored, owner)
        bitmap = state["bitmap"]
        if bitmap.dtype != torch.int16 or bitmap.dim() != 2:
            raise ValueError(f"{owner}: tensor 'bitmap' must be a 2-D int16 tensor, but got {bitmap.dtype} of shape "
                             f"{tuple(bitmap.shape)}")
        state["row_offsets"] = row_offsets_from_bitmap(bitmap)
        return state

    def kernel_view(self, state: State, cols: int) -> BitmapWeight:
        return BitmapWeight(state["values"], state["bitmap"], state["row_offsets"], cols)

    def expands_on(self, device_type: str) -> bool:
        return device_type in ("cpu", "meta")  # the decompress_bitmap op is CPU only; meta holds no data


BITMAP = register(BitmapFormat())
