"""The 2:4 (semi-structured) layout: values (rows, k/2) plus metadata in torch's CUTLASS order.

The bit-level description is in ``csrc/include/prunekit/format24.h``; this module holds the
shape rules that the Python side (fake impls, references, tests) needs, the exact conversions to
and from the bitmap format (which the CPU kernels run a 2:4 weight in), and the "2:4" storage of
modules and checkpoints: state and checkpoint entry ``values`` (rows, cols / 2) and ``meta``.

For fp16, bf16 and int8 the values and metadata are bit for bit those of
``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``, so a
compressed weight can be handed to ``torch.sparse.SparseSemiStructuredTensorCUTLASS``. fp32 uses
the 16-bit layout over fp32 entries: a true 2:4 format, which the CPU kernels need. (torch's own
fp32 layout is the 1:2 pattern of TF32 sparse tensor cores and cannot hold every 2:4 matrix.)
"""

from dataclasses import dataclass

import torch

from .._names import dtype_name
from .base import State, WeightFormat, register
from .bitmap import BitmapWeight, bitmap_mask

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


def group_columns(meta: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, cols / 4, 2) the two columns each group's metadata names, for values of ``dtype``
    (the metadata's shape and dtype already checked)."""
    layout = semi24_layout(dtype)
    meta_cols = meta.shape[1]
    meta_bytes = meta.element_size()
    words = meta.reshape(-1)[meta_offsets(rows, meta_cols, meta_bytes).reshape(-1)].long()
    words = words & (2 ** (8 * meta_bytes) - 1)
    shifts = 4 * torch.arange(layout.groups_per_meta)
    codes = ((words.reshape(rows, meta_cols, 1) >> shifts) & 0xF).reshape(rows, cols // 4)
    base = 4 * torch.arange(cols // 4)
    return torch.stack((base + (codes & 3), base + (codes >> 2)), dim=-1)


def layout_problem(rows: int, cols: int, dtype: torch.dtype) -> str | None:
    """None if a (rows, cols) ``dtype`` weight fits the 2:4 layout a module holds, else why not."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the 2:4 format holds float16, bfloat16 or float32 weights, but the weight is {dtype_name(dtype)}"
    layout = semi24_layout(dtype)
    if rows % layout.row_alignment or cols % layout.col_alignment:
        return (f"the 2:4 layout needs rows % {layout.row_alignment} == 0 and columns % {layout.col_alignment} == 0, "
                f"but the weight matrix is {rows} x {cols}")
    return None


def first_dense_group(matrix: torch.Tensor) -> tuple[int, int, int] | None:
    """(row, group, nonzeros) of the first group of four with more than two nonzeros, or None;
    (0, 0, -1) when the columns do not divide into groups of four."""
    rows, cols = matrix.shape
    if cols % 4:
        return (0, 0, -1)
    counts = (matrix.reshape(rows, cols // 4, 4) != 0).sum(-1)
    bad = (counts > 2).nonzero()
    if bad.numel() == 0:
        return None
    row, group = (int(v) for v in bad[0])
    return row, group, int(counts[row, group])


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
                         f"{layout.col_alignment // 2} columns (compress_24's layout), but got shape "
                         f"{list(values.shape)}")
    if meta.dtype != layout.meta_dtype:
        raise ValueError(f"from_semi24: meta must have dtype {layout.meta_dtype} (as compress_24 returns it), "
                         f"but got {meta.dtype}")
    if tuple(meta.shape) != layout.meta_shape(rows, cols):
        raise ValueError(f"from_semi24: meta must have shape {list(layout.meta_shape(rows, cols))} for values of "
                         f"shape {list(values.shape)}, but got {list(meta.shape)}")
    row_offsets = torch.arange(rows + 1, dtype=torch.int64) * half
    bitmap = _marks_bitmap(meta, rows, half)
    if bitmap is None:  # corrupt metadata: find and name the first bad group
        positions = group_columns(meta, rows, cols, values.dtype)
        ascending = positions[..., 0] < positions[..., 1]
        bad = (~ascending).nonzero()
        row, group = (int(i) for i in bad[0]) if bad.numel() else (0, 0)
        raise ValueError(f"from_semi24: meta must encode two distinct ascending columns per group, but the group at "
                         f"row {row}, columns {4 * group}..{4 * group + 3} does not (corrupt or foreign metadata)")
    return BitmapWeight(values.contiguous().reshape(-1), bitmap, row_offsets, cols)


def _marks_bitmap(meta: torch.Tensor, rows: int, half: int) -> torch.Tensor | None:
    """The int16 bitmap of the positions ``meta`` names (two per group of four), or None when the
    metadata is not two distinct ascending columns per group. Places the stored values' ordinals
    1..half of each row with the ``decompress_24`` op and reads them back with ``compress_bitmap``
    (both exact, in C++): the ordinals come back in column order exactly when every group names
    two distinct columns in ascending order, so the stored values pack as the bitmap says."""
    ordinals = torch.arange(1, half + 1, dtype=torch.float32).expand(rows, half).contiguous()
    try:
        placed = torch.ops.prunekit.decompress_24(ordinals, meta)
    except (RuntimeError, ValueError):
        return None
    read_back, bitmap, offsets = torch.ops.prunekit.compress_bitmap(placed)
    if read_back.numel() != rows * half or not torch.equal(read_back.view(rows, half), ordinals):
        return None
    return bitmap


def to_semi24(weight: BitmapWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact conversion back to torch's CUTLASS 2:4 layout; a weight with other than two marked
    positions per group of four is not a 2:4 weight and raises."""
    rows, cols = weight.shape
    counts = torch.diff(weight.row_offsets)
    if (cols % 4 or weight.values.numel() != rows * cols // 2 or tuple(counts.shape) != (rows,)
            or not bool((counts == cols // 2).all())):
        raise ValueError("to_semi24: the weight must mark exactly 2 of every 4 columns (a from_semi24 weight)")
    marked = bitmap_mask(weight.bitmap, cols)
    if not bool((marked.reshape(rows, -1, 4).sum(-1) == 2).all()):
        raise ValueError("to_semi24: the weight must mark exactly 2 of every 4 columns (a from_semi24 weight)")
    values = weight.values.reshape(rows, cols // 2)
    # The metadata depends only on which positions are nonzero: compress a matrix of ones there.
    _, meta = torch.ops.prunekit.compress_24(marked.to(weight.values.dtype))
    return values, meta


class Semi24Format(WeightFormat):
    """The "2:4" format of modules and checkpoints (see the module docstring)."""

    name = "2:4"
    state_names = ("values", "meta")
    checkpoint_names = ("values", "meta")

    def compress(self, matrix: torch.Tensor, owner: str, weight_shape=None) -> State:
        rows, cols = matrix.shape
        problem = layout_problem(rows, cols, matrix.dtype)
        if problem is not None:
            raise ValueError(f"{owner}: format='2:4' cannot hold this weight: {problem}")
        bad = first_dense_group(matrix)
        if bad is not None:
            row, group, count = bad
            raise ValueError(f"{owner}: format='2:4' needs at most 2 nonzeros in every group of 4 consecutive input "
                             f"columns, but row {row}, columns {4 * group}..{4 * group + 3} hold {count}; prune it "
                             "with sparsity='2:4' first or use format='unstructured'")
        values, meta = torch.ops.prunekit.compress_24(matrix.detach().contiguous())
        return {"values": values, "meta": meta}

    def to_dense(self, state: State, rows: int, cols: int) -> torch.Tensor:
        return torch.ops.prunekit.decompress_24(state["values"], state["meta"])

    def checkpoint_nbytes(self, rows, cols, dtype, nonzeros, is_24):
        if not is_24 or layout_problem(rows, cols, dtype) is not None:
            return None
        layout = semi24_layout(dtype)
        meta_rows, meta_cols = layout.meta_shape(rows, cols)
        return rows * (cols // 2) * dtype.itemsize + meta_rows * meta_cols * layout.meta_dtype.itemsize

    def expected_state(self, rows, cols, dtype, state, weight_shape=None):
        layout = semi24_layout(dtype)
        return {"values": (layout.values_shape(rows, cols), dtype),
                "meta": (layout.meta_shape(rows, cols), layout.meta_dtype)}

    def check_consistency(self, owner: str, state: State, rows: int, cols: int) -> None:
        problem = layout_problem(rows, cols, state["values"].dtype)
        if problem is not None:
            raise ValueError(f"{owner}: a '2:4' weight's tensors must fit the layout: {problem}")

    def kernel_view(self, state: State, cols: int) -> BitmapWeight:
        """The bitmap view (exactly two marks per group); corrupt metadata raises ValueError."""
        return from_semi24(state["values"], state["meta"])


SEMI24 = register(Semi24Format())
