"""Fake (meta) impls: output shapes and dtypes of every op, so torch.compile can trace them.

Shape rules that do not depend on data are checked here too, with the same messages as the
kernels; data-dependent checks (finite scores, at most two nonzeros per group) happen at run time.
"""

import torch

from ..formats.semi24 import semi24_layout


def _check_same_device(op: str, first: str, **tensors) -> None:
    """Every tensor argument on the device of `first`. A fake runs whenever one argument is on the
    meta device, so without this a meta weight with a CPU x would return an unwritten CPU tensor."""
    device = tensors[first].device
    for name, tensor in tensors.items():
        if tensor is not None:
            torch._check(
                tensor.device == device,
                lambda: f"prunekit.{op}: argument '{name}' must be on the device of '{first}' ({device}), "
                f"but got {tensor.device}",
            )


def _check_multiple(value: int, multiple: int, op: str, what: str) -> None:
    torch._check(
        value % multiple == 0,
        lambda: f"prunekit.{op}: {what} must be a multiple of {multiple}, but got {value}",
    )


@torch.library.register_fake("prunekit::nm_mask")
def _nm_mask_fake(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    torch._check(m >= 1, lambda: f"prunekit.nm_mask: argument 'm' must be >= 1, but got {m}")
    torch._check(
        0 <= n <= m, lambda: f"prunekit.nm_mask: argument 'n' must be in [0, m={m}], but got {n}"
    )
    return torch.empty_like(scores, dtype=torch.bool)


@torch.library.register_fake("prunekit::compress_24")
def _compress_24_fake(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layout = semi24_layout(dense.dtype)
    rows, cols = dense.shape
    _check_multiple(rows, layout.row_alignment, "compress_24", "the number of rows of 'dense'")
    _check_multiple(cols, layout.col_alignment, "compress_24", "the number of columns of 'dense'")
    values = dense.new_empty(layout.values_shape(rows, cols))
    meta = dense.new_empty(layout.meta_shape(rows, cols), dtype=layout.meta_dtype)
    return values, meta


@torch.library.register_fake("prunekit::decompress_24")
def _decompress_24_fake(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    _check_same_device("decompress_24", "values", values=values, meta=meta)
    layout = semi24_layout(values.dtype)
    rows, cols = values.shape[0], 2 * values.shape[1]
    expected = layout.meta_shape(rows, cols)
    torch._check(
        tuple(meta.shape) == expected,
        lambda: f"prunekit.decompress_24: argument 'meta' must have shape {list(expected)}, "
        f"but got {list(meta.shape)}",
    )
    return values.new_empty((rows, cols))


@torch.library.register_fake("prunekit::hessian_accumulate_")
def _hessian_accumulate_fake(hessian: torch.Tensor, x: torch.Tensor, n_seen: int, gemm: str = "aten") -> None:
    _check_same_device("hessian_accumulate_", "hessian", hessian=hessian, x=x)
    return None


@torch.library.register_fake("prunekit::sparsegpt_solve_")
def _sparsegpt_solve_fake(weight, hinv, sparsity: float, n: int, m: int, blocksize: int) -> torch.Tensor:
    _check_same_device("sparsegpt_solve_", "weight", weight=weight, hinv=hinv)
    return torch.empty_like(weight, dtype=torch.bool)


@torch.library.register_fake("prunekit::compress_bitmap")
def _compress_bitmap_fake(dense: torch.Tensor):
    rows, cols = dense.shape
    nnz = torch.library.get_ctx().new_dynamic_size()
    values = dense.new_empty((nnz,))
    bitmap = dense.new_empty((rows, (cols + 15) // 16), dtype=torch.int16)
    row_offsets = dense.new_empty((rows + 1,), dtype=torch.int64)
    return values, bitmap, row_offsets


@torch.library.register_fake("prunekit::decompress_bitmap")
def _decompress_bitmap_fake(values, bitmap, row_offsets, cols: int) -> torch.Tensor:
    _check_same_device("decompress_bitmap", "values", values=values, bitmap=bitmap, row_offsets=row_offsets)
    return values.new_empty((bitmap.shape[0], cols))


def _check_linear_input(op: str, x, in_features: int) -> None:
    torch._check(
        x.shape[-1] == in_features,
        lambda: f"prunekit.{op}: the last dimension of 'x' must be in_features={in_features}, "
        f"but got shape {list(x.shape)}",
    )


@torch.library.register_fake("prunekit::sparse_linear")
def _sparse_linear_fake(x, values, bitmap, row_offsets, in_features: int, bias=None) -> torch.Tensor:
    _check_same_device("sparse_linear", "x", x=x, values=values, bitmap=bitmap, row_offsets=row_offsets, bias=bias)
    _check_linear_input("sparse_linear", x, in_features)
    return x.new_empty((*x.shape[:-1], bitmap.shape[0]))


@torch.library.register_fake("prunekit::sparse_linear_csr16")
def _sparse_linear_csr16_fake(x, values, col_indices, row_offsets, in_features: int, bias=None) -> torch.Tensor:
    _check_same_device("sparse_linear_csr16", "x", x=x, values=values, col_indices=col_indices,
                       row_offsets=row_offsets, bias=bias)
    _check_linear_input("sparse_linear_csr16", x, in_features)
    return x.new_empty((*x.shape[:-1], row_offsets.shape[0] - 1))


@torch.library.register_fake("prunekit::sparse_conv1x1")
def _sparse_conv1x1_fake(x, values, bitmap, row_offsets, bias=None, activation: int = 0) -> torch.Tensor:
    _check_same_device("sparse_conv1x1", "x", x=x, values=values, bitmap=bitmap, row_offsets=row_offsets, bias=bias)
    return x.new_empty((x.shape[0], bitmap.shape[0], x.shape[2], x.shape[3]))


def _tile_grid(rows: int, cols: int) -> tuple[int, int]:
    return -(-rows // 16), -(-cols // 64)


def _check_tiles(op: str, x, tile_values, tile_bitmap, tile_offsets, bias) -> None:
    _check_same_device(op, "x", x=x, tile_values=tile_values, tile_bitmap=tile_bitmap, tile_offsets=tile_offsets,
                       bias=bias)


@torch.library.register_fake("prunekit::bitmap_to_tiles")
def _bitmap_to_tiles_fake(values, bitmap, row_offsets, cols: int):
    _check_same_device("bitmap_to_tiles", "values", values=values, bitmap=bitmap, row_offsets=row_offsets)
    panels, chunks = _tile_grid(bitmap.shape[0], cols)
    size = torch.library.get_ctx().new_dynamic_size()
    return (values.new_empty((size,)), bitmap.new_empty((panels, chunks, 16, 4)),
            row_offsets.new_empty((panels * chunks + 1,)))


@torch.library.register_fake("prunekit::tiles_to_bitmap")
def _tiles_to_bitmap_fake(tile_values, tile_bitmap, tile_offsets, rows: int, cols: int):
    _check_same_device("tiles_to_bitmap", "tile_values", tile_values=tile_values, tile_bitmap=tile_bitmap,
                       tile_offsets=tile_offsets)
    nnz = torch.library.get_ctx().new_dynamic_size()
    return (tile_values.new_empty((nnz,)), tile_bitmap.new_empty((rows, (cols + 15) // 16)),
            tile_offsets.new_empty((rows + 1,)))


@torch.library.register_fake("prunekit::decompress_tiles")
def _decompress_tiles_fake(tile_values, tile_bitmap, tile_offsets, rows: int, cols: int):
    _check_same_device("decompress_tiles", "tile_values", tile_values=tile_values, tile_bitmap=tile_bitmap,
                       tile_offsets=tile_offsets)
    return tile_values.new_empty((rows, cols))


@torch.library.register_fake("prunekit::sparse_linear_tiles")
def _sparse_linear_tiles_fake(x, tile_values, tile_bitmap, tile_offsets, out_features: int, in_features: int,
                              bias=None, kernel: str = "auto"):
    _check_tiles("sparse_linear_tiles", x, tile_values, tile_bitmap, tile_offsets, bias)
    _check_linear_input("sparse_linear_tiles", x, in_features)
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("prunekit::sparse_conv1x1_tiles")
def _sparse_conv1x1_tiles_fake(x, tile_values, tile_bitmap, tile_offsets, out_channels: int, in_channels: int,
                               bias=None, activation: int = 0, kernel: str = "auto"):
    _check_tiles("sparse_conv1x1_tiles", x, tile_values, tile_bitmap, tile_offsets, bias)
    return x.new_empty((x.shape[0], out_channels, x.shape[2], x.shape[3]))


@torch.library.register_fake("prunekit::sparse_linear_24")
def _sparse_linear_24_fake(x, values, meta, in_features: int, bias=None, meta_sm90=None,
                           kernel: str = "auto") -> torch.Tensor:
    _check_same_device("sparse_linear_24", "x", x=x, values=values, meta=meta, bias=bias, meta_sm90=meta_sm90)
    _check_linear_input("sparse_linear_24", x, in_features)
    torch._check(
        2 * values.shape[1] == in_features,
        lambda: f"prunekit.sparse_linear_24: argument 'in_features' must be twice the columns of 'values' "
        f"({2 * values.shape[1]}), but got {in_features}",
    )
    return x.new_empty((*x.shape[:-1], values.shape[0]))


@torch.library.register_fake("prunekit::meta_24_to_sm90")
def _meta_24_to_sm90_fake(meta: torch.Tensor) -> torch.Tensor:
    rows, cols = meta.shape
    _check_multiple(rows, 32, "meta_24_to_sm90", "the number of rows of 'meta'")
    _check_multiple(cols, 2, "meta_24_to_sm90", "the number of columns of 'meta'")
    # CUTLASS 3's metadata extents: rows padded to 64, columns (16 per meta element) to 128, 8 per byte.
    return meta.new_empty((-(-rows // 64) * 64, -(-(16 * cols) // 128) * 16), dtype=torch.uint8)


@torch.library.register_fake("prunekit::admm_solve")
def _admm_solve_fake(weight, hessian, inverse, keep, sparsity: float, n: int, m: int, per_row: bool, rho: float,
                     iterations: int, prune_iterations: int, pcg_iterations: int):
    _check_same_device("admm_solve", "weight", weight=weight, hessian=hessian, inverse=inverse, keep=keep)
    cols = weight.shape[1]
    for name, tensor in (("hessian", hessian), ("inverse", inverse)):
        torch._check(tuple(tensor.shape) == (cols, cols), lambda: f"prunekit.admm_solve: argument '{name}' must be "
                     f"({cols}, {cols}) to match weight {list(weight.shape)}, but got {list(tensor.shape)}")
    if m > 0:
        _check_multiple(cols, m, "admm_solve", "the number of columns of 'weight'")
    return torch.empty_like(weight), torch.empty_like(weight, dtype=torch.bool)
