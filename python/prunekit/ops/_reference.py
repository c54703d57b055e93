"""Pure-PyTorch references of every prunekit op (for tests and documentation, not for speed).

Each takes the same arguments and returns the same result as its op, written for clarity with
vectorised torch code; the kernels are tested against these.
"""

import math

import torch

from ..formats.bitmap import bitmap_mask
from ..formats.semi24 import meta_offsets as _meta_offsets
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


def sparsegpt_solve_(
    weight: torch.Tensor, hinv: torch.Tensor, sparsity: float, n: int, m: int, blocksize: int
) -> torch.Tensor:
    """SparseGPT's blocked OBS column updates, as a per-column Python loop (the public reference
    implementation's structure), in place on fp32 ``weight`` (rows, cols).

    ``hinv`` is the upper Cholesky factor of the damped inverse Hessian. Unstructured (m == 0):
    each block of ``blocksize`` columns prunes, from scores w^2 / hinv_ii^2 taken at the block's
    start, exactly the entries that bring the running total to round(sparsity * rows * cols_done)
    (smallest first, ties by lower flat index). N:M (m > 0): at every m-th column, the n largest
    scores of the next m columns of each row, computed on the updated weights, are kept (ties keep
    the lower index). Returns the keep-mask.
    """
    rows, cols = weight.shape
    keep = torch.ones(rows, cols, dtype=torch.bool, device=weight.device)
    pruned_so_far = 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = weight[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diag = torch.diagonal(hinv1)
        keep1 = torch.ones_like(w1, dtype=torch.bool)
        if m == 0:
            target = round(sparsity * rows * i2)
            prune_count = target - pruned_so_far
            pruned_so_far = target
            scores = (w1 / diag).square().flatten()
            order = torch.sort(scores, stable=True).indices
            keep1.view(-1)[order[:prune_count]] = False
        for i in range(count):
            if m > 0 and i % m == 0:
                scores = (w1[:, i : i + m] / diag[i : i + m]).square()
                keep1[:, i : i + m] = nm_mask(scores, n, m)
            w = w1[:, i]
            q = torch.where(keep1[:, i], w, torch.zeros_like(w))
            err = (w - q) / diag[i]
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        weight[:, i1:i2] = w1
        weight[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
        keep[:, i1:i2] = keep1
    return keep


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole SparseGPT solve as the public reference does it: dead inputs, damping, inverse
    Hessian factor, then the per-column loop of :func:`sparsegpt_solve_`. Returns (weight, keep)."""
    w = weight.detach().to(torch.float32, copy=True)
    h = hessian.detach().to(torch.float32, copy=True)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.diagonal(h).mean() * torch.eye(h.shape[0], device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = sparsegpt_solve_(w, hinv, sparsity, n, m, blocksize)
    return w, keep


def compress_bitmap(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed nonzeros (row by row, column order), int16 bitmap (rows, ceil(k/16)), row offsets."""
    rows, cols = dense.shape
    nonzero = dense != 0
    words = (cols + 15) // 16
    padded = torch.zeros(rows, words * 16, dtype=torch.int64)
    padded[:, :cols] = nonzero.long()
    bits = (padded.reshape(rows, words, 16) << torch.arange(16)).sum(-1)
    bitmap = _to_signed(bits, 16, torch.int16)
    row_offsets = torch.zeros(rows + 1, dtype=torch.int64)
    row_offsets[1:] = nonzero.sum(1).cumsum(0)
    return dense[nonzero], bitmap, row_offsets


def decompress_bitmap(values, bitmap, row_offsets, cols: int) -> torch.Tensor:
    rows, words = bitmap.shape
    bits = (bitmap.long().unsqueeze(-1) >> torch.arange(16)) & 1
    nonzero = bits.reshape(rows, words * 16)[:, :cols].bool()
    dense = torch.zeros(rows, cols, dtype=values.dtype)
    dense[nonzero] = values
    return dense


def sparse_linear(x, values, bitmap, row_offsets, in_features: int, bias=None) -> torch.Tensor:
    weight = decompress_bitmap(values, bitmap, row_offsets, in_features).float()
    out = torch.nn.functional.linear(x.float(), weight, None if bias is None else bias.float())
    return out.to(x.dtype)


def sparse_linear_csr16(x, values, col_indices, row_offsets, in_features: int, bias=None) -> torch.Tensor:
    rows = row_offsets.numel() - 1
    row_of_value = torch.repeat_interleave(torch.arange(rows), torch.diff(row_offsets))
    weight = torch.zeros(rows, in_features, dtype=torch.float32)
    weight[row_of_value, col_indices.long() & 0xFFFF] = values.float()
    out = torch.nn.functional.linear(x.float(), weight, None if bias is None else bias.float())
    return out.to(x.dtype)


def sparse_conv1x1(x, values, bitmap, row_offsets, bias=None, activation: int = 0) -> torch.Tensor:
    weight = decompress_bitmap(values, bitmap, row_offsets, x.shape[1]).float()
    out = torch.nn.functional.conv2d(x, weight[:, :, None, None], None if bias is None else bias.float())
    if activation == 1:
        out = out.relu()
    elif activation == 2:
        out = out.clamp(0, 6)
    return out


def _tile_positions(words_padded: torch.Tensor, panels: int, chunks: int) -> torch.Tensor:
    """(tiles, 1024) marks of the padded weight in run order (tile by tile, row by row)."""
    mask = bitmap_mask(words_padded, chunks * 64)
    return mask.reshape(panels, 16, chunks, 64).permute(0, 2, 1, 3).reshape(panels * chunks, 1024)


def bitmap_to_tiles(values, bitmap, row_offsets, cols: int):
    """Tiles of 16 x 64 in run order, each run at a multiple of 8 values, zero-padded."""
    rows, words = bitmap.shape
    panels, chunks = -(-rows // 16), -(-cols // 64)
    padded_words = torch.zeros(panels * 16, chunks * 4, dtype=torch.int16)
    padded_words[:rows, :words] = bitmap
    marks = _tile_positions(padded_words, panels, chunks)
    padded = torch.zeros(panels * 16, chunks * 64, dtype=values.dtype)
    padded[:rows, :cols][bitmap_mask(bitmap, cols)] = values  # row-major: the bitmap format's order
    in_run_order = padded.reshape(panels, 16, chunks, 64).permute(0, 2, 1, 3).reshape(panels * chunks, 1024)
    runs = (marks.sum(1) + 7) // 8 * 8
    tile_offsets = torch.cat((torch.zeros(1, dtype=torch.int64), runs.cumsum(0)))
    tile_values = torch.zeros(int(tile_offsets[-1]), dtype=values.dtype)
    at = tile_offsets[:-1, None] + marks.cumsum(1) - 1
    tile_values[at[marks]] = in_run_order[marks]
    tile_bitmap = padded_words.reshape(panels, 16, chunks, 4).permute(0, 2, 1, 3).contiguous()
    return tile_values, tile_bitmap, tile_offsets


def _tiles_padded_dense(tile_values, tile_bitmap, tile_offsets):
    """The padded (panels * 16, chunks * 64) matrix and its marks."""
    panels, chunks = tile_bitmap.shape[:2]
    words = tile_bitmap.permute(0, 2, 1, 3).reshape(panels * 16, chunks * 4)
    marks = _tile_positions(words, panels, chunks)
    at = tile_offsets[:-1, None] + marks.cumsum(1) - 1
    in_run_order = torch.zeros(panels * chunks, 1024, dtype=tile_values.dtype)
    in_run_order[marks] = tile_values[at[marks]]
    dense = in_run_order.reshape(panels, chunks, 16, 64).permute(0, 2, 1, 3).reshape(panels * 16, chunks * 64)
    return dense, bitmap_mask(words, chunks * 64), words


def tiles_to_bitmap(tile_values, tile_bitmap, tile_offsets, rows: int, cols: int):
    dense, mask, words = _tiles_padded_dense(tile_values, tile_bitmap, tile_offsets)
    mask = mask[:rows, :cols]
    row_offsets = torch.cat((torch.zeros(1, dtype=torch.int64), mask.sum(1).cumsum(0)))
    return dense[:rows, :cols][mask], words[:rows, :(cols + 15) // 16].contiguous(), row_offsets


def decompress_tiles(tile_values, tile_bitmap, tile_offsets, rows: int, cols: int) -> torch.Tensor:
    return _tiles_padded_dense(tile_values, tile_bitmap, tile_offsets)[0][:rows, :cols].contiguous()


def sparse_linear_tiles(x, tile_values, tile_bitmap, tile_offsets, out_features: int, in_features: int, bias=None,
                        kernel: str = "auto") -> torch.Tensor:
    weight = decompress_tiles(tile_values, tile_bitmap, tile_offsets, out_features, in_features).float()
    out = torch.nn.functional.linear(x.float(), weight, None if bias is None else bias.float())
    return out.to(x.dtype)


def sparse_conv1x1_tiles(x, tile_values, tile_bitmap, tile_offsets, out_channels: int, in_channels: int, bias=None,
                         activation: int = 0, kernel: str = "auto") -> torch.Tensor:
    weight = decompress_tiles(tile_values, tile_bitmap, tile_offsets, out_channels, in_channels).float()
    out = torch.nn.functional.conv2d(x.float(), weight[:, :, None, None], None if bias is None else bias.float())
    if activation == 1:
        out = out.relu()
    elif activation == 2:
        out = out.clamp(0, 6)
    return out.to(x.dtype)


def sparse_linear_24(x, values, meta, in_features: int, bias=None, meta_sm90=None, kernel="auto") -> torch.Tensor:
    """x W^T + b with W = decompress_24(values, meta), fp32 products, result in x's dtype
    (``meta_sm90``, a precomputed copy of the metadata for Hopper, and ``kernel`` do not change it)."""
    weight = decompress_24(values.cpu(), meta.cpu()).float()
    out = torch.nn.functional.linear(x.cpu().float(), weight, None if bias is None else bias.cpu().float())
    return out.to(x.dtype)


# CUTLASS 3's metadata layout for 16-bit A (cutlass::Sm90GemmSparseConfig, TensorEAtom_16bit) at
# MinTileShapeK = 128, i.e. NumK = 4: an ordered CuTe layout over logical elements with these
# (M modes, K modes) shapes and steps, atoms stacked down M first, then along K.
_SM90_ATOM_SHAPE = ((8, 2, 4), (16, 2, 4))
_SM90_ATOM_STEP = ((3, 1, 5), (0, 4, 2))


def _ordered_strides(shape, step):
    """Strides of CuTe's make_ordered_layout(shape, step): the leaf modes packed compactly in
    increasing step order. Returns (strides per mode, cosize)."""
    leaves = [(size, order, mode, i) for mode, (sizes, orders) in enumerate(zip(shape, step))
              for i, (size, order) in enumerate(zip(sizes, orders))]
    strides = [[0] * len(sizes) for sizes in shape]
    running = 1
    for size, _, mode, i in sorted(leaves, key=lambda leaf: leaf[1]):
        strides[mode][i] = running
        running *= size
    return strides, running


def _colex_dot(coord: torch.Tensor, sizes, strides) -> torch.Tensor:
    """Sum of coordinate * stride over a mode split colexicographically into ``sizes``."""
    total = torch.zeros_like(coord)
    for size, stride in zip(sizes, strides):
        total += (coord % size) * stride
        coord = coord // size
    return total


def _sm90_meta_bit(row: torch.Tensor, col: torch.Tensor, rows_padded: int) -> torch.Tensor:
    """Bit index of logical element (row, col) in the sm90 metadata buffer (CUTLASS's fill_layoutE)."""
    strides, cosize = _ordered_strides(_SM90_ATOM_SHAPE, _SM90_ATOM_STEP)
    atom_rows, atom_cols = (math.prod(sizes) for sizes in _SM90_ATOM_SHAPE)
    return (_colex_dot(row % atom_rows, _SM90_ATOM_SHAPE[0], strides[0]) + (row // atom_rows) * cosize
            + _colex_dot(col % atom_cols, _SM90_ATOM_SHAPE[1], strides[1])
            + (col // atom_cols) * rows_padded * atom_cols)


def meta_24_to_sm90(meta: torch.Tensor) -> torch.Tensor:
    """The 16-bit 2:4 metadata (torch's layout) in the layout of the sm90a sparse GEMM: each group's
    4-bit code at the bit CUTLASS 3's layout gives its first column, padding zero."""
    rows, meta_cols = meta.shape
    cols = 16 * meta_cols
    words = meta.reshape(-1)[_meta_offsets(rows, meta_cols, 2).reshape(-1)].long() & 0xFFFF
    codes = ((words.reshape(rows, meta_cols, 1) >> (4 * torch.arange(4))) & 0xF).reshape(rows, cols // 4)
    rows_padded, cols_padded = -(-rows // 64) * 64, -(-cols // 128) * 128
    bit = _sm90_meta_bit(torch.arange(rows).unsqueeze(1), 4 * torch.arange(cols // 4).unsqueeze(0), rows_padded)
    out = torch.zeros(rows_padded * cols_padded // 8, dtype=torch.int64)
    # Each code owns its own nibble: adding is or-ing.
    out.index_add_(0, (bit // 8).reshape(-1), (codes << (bit % 8)).reshape(-1))
    return out.to(torch.uint8).reshape(rows_padded, cols_padded // 8)


def _admm_keep(scores: torch.Tensor, sparsity: float, n: int, m: int, per_row: bool) -> torch.Tensor:
    """The keep-mask of an ADMM projection: N:M (n largest of every m, ties to the lower index),
    else exactly round(sparsity * numel) smallest pruned, across the layer or per row (Wanda's
    grouping: count // rows per row, the remainder to the rows with the smallest next score)."""
    if m > 0:
        return nm_mask(scores, n, m)
    return lowest_pruned_keep(scores, min(scores.numel(), int(round(sparsity * scores.numel()))), per_row)


def lowest_pruned_keep(scores: torch.Tensor, count: int, per_row: bool) -> torch.Tensor:
    """Keep-mask pruning the ``count`` lowest scores by stable sorting (ties: lower index), across
    the layer or per row (``count // rows`` per row, the remainder to the rows with the smallest
    next score): the reference of prunekit.solvers.masks' selection."""
    rows, _ = scores.shape
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count <= 0:
        return keep
    if not per_row:
        order = torch.sort(scores.reshape(-1), stable=True).indices
        keep.view(-1)[order[:count]] = False
        return keep
    per, extra = divmod(count, rows)
    values, order = torch.sort(scores, dim=1, stable=True)
    keep.scatter_(1, order[:, :per], False)
    if extra:
        chosen = torch.sort(values[:, per], stable=True).indices[:extra]
        keep[chosen, order[chosen, per]] = False
    return keep


def admm_solve(weight: torch.Tensor, hessian: torch.Tensor, inverse: torch.Tensor, keep: torch.Tensor | None,
               sparsity: float, n: int, m: int, per_row: bool, rho: float, iterations: int, prune_iterations: int,
               pcg_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ADMM for min_B tr((B - W) H (B - W)^T) over B with a sparse support, then a least-squares
    solve on that support by preconditioned conjugate gradients (per row, Jacobi preconditioner).

    ``inverse`` is (H + rho I)^-1. The scaled ADMM iterates Z = P(B + U), U += B - Z,
    B = (W H + rho (Z - U)) inverse; P keeps ``keep`` when given, else the largest |B + U| at the
    sparsity of a cubic schedule over the first ``prune_iterations`` iterations (the target after
    them; N:M projects to n:m from the start). The support is that of the last projection (of W
    without iterations). Returns (pruned weight, keep-mask)."""
    weight, hessian, inverse = weight.double(), hessian.double(), inverse.double()

    def project(candidate: torch.Tensor, step: int) -> torch.Tensor:
        if keep is not None:
            return keep
        if m == 0 and step < prune_iterations:
            level = sparsity * (1 - (1 - (step + 1) / prune_iterations) ** 3)
        else:
            level = sparsity
        return _admm_keep(candidate.abs(), level, n, m, per_row)

    target = weight @ hessian
    current = weight.clone()
    dual = torch.zeros_like(weight)
    support = project(weight, prune_iterations)
    pruned = weight * support
    for step in range(iterations):
        candidate = current + dual
        support = project(candidate, step)
        pruned = candidate * support
        dual = dual + current - pruned
        current = (target + rho * (pruned - dual)) @ inverse
    # Preconditioned conjugate gradients on the support, each row its own system.
    diag = torch.diagonal(hessian)
    residual = (target - pruned @ hessian) * support
    preconditioned = residual / diag
    direction = preconditioned.clone()
    product = (residual * preconditioned).sum(1)
    for _ in range(pcg_iterations):
        curvature_direction = (direction @ hessian) * support
        curvature = (direction * curvature_direction).sum(1)
        alpha = torch.where(curvature > 0, product / torch.where(curvature > 0, curvature, 1), 0)
        pruned = pruned + alpha.unsqueeze(1) * direction
        residual = residual - alpha.unsqueeze(1) * curvature_direction
        preconditioned = residual / diag
        new_product = (residual * preconditioned).sum(1)
        beta = torch.where(product > 0, new_product / torch.where(product > 0, product, 1), 0)
        direction = preconditioned + beta.unsqueeze(1) * direction
        product = new_product
    return (pruned * support).float(), support
