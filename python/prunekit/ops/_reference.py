"""Pure-PyTorch references of every prunekit op (for tests and documentation, not for speed).

Each takes the same arguments and returns the same result as its op, written for clarity with
vectorised torch code; the kernels are tested against these.
"""

import torch

from ..formats.semi24 import semi24_layout


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest of every m consecutive scores; ties keep the lower index."""
    if not torch.isfinite(scores).all():
        raise ValueError("nm_mask reference: scores must be finite")
    groups = scores.reshape(-1, m).double()
    # A stable descending sort puts equal scores in index order, so the lower index wins a tie.
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(scores.shape)


def _group_codes(nonzero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept column pair (idx0 < idx1) of each group of 4 from its nonzero flags.

    Groups with fewer than two nonzeros are completed with zero entries in the one way CUTLASS's
    layout (and torch's converter) does it, so metadata is canonical.
    """
    nz0, nz1, nz3 = nonzero[..., 0], nonzero[..., 1], nonzero[..., 3]
    # Table over (nz0, nz1): the first kept column.
    idx0 = torch.where(nz0, 0, torch.where(nz1, 1, 2))
    # The second kept column: the second nonzero when there is one; fillers as in CUTLASS.
    idx1 = torch.where(
        nz0 & nz1,
        1,
        torch.where(~nz0 & ~nz1, 3, torch.where(nz3, 3, 2)),
    )
    return idx0.long(), idx1.long()


def _meta_offsets(rows: int, meta_cols: int, meta_bytes: int) -> torch.Tensor:
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


def _to_signed(words: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret unsigned words held in int64 as the signed integer dtype of that width."""
    return torch.where(words >= 2 ** (bits - 1), words - 2**bits, words).to(dtype)


def compress_24(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layout = semi24_layout(dense.dtype)
    rows, cols = dense.shape
    if rows % layout.row_alignment or cols % layout.col_alignment:
        raise ValueError(
            f"compress_24 reference: shape {tuple(dense.shape)} must be a multiple of "
            f"({layout.row_alignment}, {layout.col_alignment})"
        )
    groups = dense.reshape(rows, cols // 4, 4)
    nonzero = groups != 0
    if (nonzero.sum(-1) > 2).any():
        raise ValueError("compress_24 reference: a group of 4 has more than 2 nonzeros")
    idx0, idx1 = _group_codes(nonzero)
    values = torch.stack(
        (groups.gather(2, idx0.unsqueeze(-1)), groups.gather(2, idx1.unsqueeze(-1))), dim=2
    ).reshape(rows, cols // 2)
    codes = (idx0 | (idx1 << 2)).reshape(rows, -1, layout.groups_per_meta)
    shifts = 4 * torch.arange(layout.groups_per_meta)
    words = (codes << shifts).sum(-1)  # nibbles do not overlap, so the sum is an OR
    meta_bytes = torch.empty((), dtype=layout.meta_dtype).element_size()
    meta_cols = words.shape[1]
    meta = torch.empty(rows * meta_cols, dtype=layout.meta_dtype)
    meta[_meta_offsets(rows, meta_cols, meta_bytes).reshape(-1)] = _to_signed(
        words.reshape(-1), 8 * meta_bytes, layout.meta_dtype
    )
    return values, meta.reshape(rows, meta_cols)


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    layout = semi24_layout(values.dtype)
    rows, cols = values.shape[0], 2 * values.shape[1]
    meta_cols = meta.shape[1]
    meta_bytes = meta.element_size()
    offsets = _meta_offsets(rows, meta_cols, meta_bytes).reshape(-1)
    words = meta.reshape(-1)[offsets].long() & (2 ** (8 * meta_bytes) - 1)
    shifts = 4 * torch.arange(layout.groups_per_meta)
    codes = ((words.reshape(rows, meta_cols, 1) >> shifts) & 0xF).reshape(rows, cols // 4)
    idx0, idx1 = codes & 3, codes >> 2
    if (idx0 >= idx1).any():
        raise ValueError("decompress_24 reference: corrupt metadata")
    pairs = values.reshape(rows, cols // 4, 2)
    dense = torch.zeros(rows, cols // 4, 4, dtype=values.dtype)
    dense.scatter_(2, idx0.unsqueeze(-1), pairs[..., :1])
    dense.scatter_(2, idx1.unsqueeze(-1), pairs[..., 1:])
    return dense.reshape(rows, cols)
