"""Typed wrappers of the ``torch.ops.prunekit`` ops.

Each wrapper calls the registered op, so it dispatches to the CPU or CUDA kernel, works under
``torch.compile(fullgraph=True)`` (through the fakes in ``_fake.py``) and raises the same errors.
Pure-PyTorch references of every op live in ``prunekit.ops._reference`` (tests and docs only).
"""

import torch

from . import _fake  # noqa: F401  (registers the fake impls)

__all__ = [
    "nm_mask",
    "compress_24",
    "decompress_24",
    "compress_bitmap",
    "decompress_bitmap",
    "sparse_linear",
    "sparse_linear_csr16",
    "sparse_conv1x1",
    "sparse_linear_24",
    "meta_24_to_sm90",
    "bitmap_to_tiles",
    "tiles_to_bitmap",
    "decompress_tiles",
    "sparse_linear_tiles",
    "sparse_conv1x1_tiles",
    "admm_solve",
]


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean keep-mask with ``n`` kept entries in every ``m`` consecutive entries of the last dim.

    The ``n`` largest scores of each group are kept; equal scores keep the lower index, so the
    mask is deterministic. ``scores`` is fp32, fp64, fp16 or bf16, contiguous, non-empty and
    finite, with its last dim a multiple of ``m``; ``0 <= n <= m``. Use ``weight.abs()`` for
    magnitude pruning or any importance score (e.g. Wanda's ``|W| * ||X||``).

    >>> keep = nm_mask(torch.tensor([[1., 4., 3., 2.]]), 2, 4)  # [[False, True, True, False]]
    """
    return torch.ops.prunekit.nm_mask(scores, n, m)


def compress_24(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a 2:4 sparse matrix into ``(values, meta)`` in torch's CUTLASS layout.

    ``dense`` is a contiguous (rows, k) fp16, bf16, int8 or fp32 matrix with at most two nonzeros
    in each group of four consecutive columns (a group with more is an error, never silently
    dropped). ``values`` is (rows, k/2) of the same dtype; ``meta`` is int16 (int32 for int8)
    of shape (rows, k/16) (k/32 for int8). rows must be a multiple of 32 (16 for int8) and k of 32
    (64 for int8). For fp16/bf16/int8 both match
    ``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``
    bit for bit; see :mod:`prunekit.formats.semi24` for fp32.
    """
    return torch.ops.prunekit.compress_24(dense)


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Expand ``(values, meta)`` from :func:`compress_24` back to the dense matrix, exactly.

    Metadata that does not name two distinct columns per group (corrupt or from another layout)
    is an error.
    """
    return torch.ops.prunekit.decompress_24(values, meta)


def compress_bitmap(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compress a (rows, k) fp32 or bf16 matrix into the bitmap format (CPU).

    Returns ``(values, bitmap, row_offsets)``: the nonzeros packed row by row in column order,
    an int16 bitmap of shape (rows, ceil(k/16)) with bit b of word w marking column 16 w + b, and
    the int64 start of each row's values (rows + 1 entries). -0.0 counts as zero.
    """
    return torch.ops.prunekit.compress_bitmap(dense)


def decompress_bitmap(values, bitmap, row_offsets, cols: int) -> torch.Tensor:
    """Expand the bitmap format back to the dense (rows, cols) matrix, exactly."""
    return torch.ops.prunekit.decompress_bitmap(values, bitmap, row_offsets, cols)


def sparse_linear(x, values, bitmap, row_offsets, in_features: int, bias=None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with W in the bitmap format, on CPU.

    ``x`` is (..., in_features) fp32 or bf16; values fp32 or bf16; accumulation is fp32 and the
    result has x's dtype. Batches of up to 4 rows stream the weight once (GEMV kernels); larger
    batches use the SpMM kernels.
    """
    return torch.ops.prunekit.sparse_linear(x, values, bitmap, row_offsets, in_features, bias)


def sparse_linear_csr16(x, values, col_indices, row_offsets, in_features: int, bias=None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with W in CSR16 on CPU: ``values`` as in the bitmap format,
    ``col_indices`` (nnz,) int16 holding each value's column as an unsigned 16-bit number
    (in_features <= 65536), ``row_offsets`` (rows + 1,) int64 (see :class:`prunekit.formats.Csr16Weight`).

    The cost is per nonzero (one load of x, one multiply-add), so at high sparsity this beats the
    bitmap GEMV at batch 1-4. Larger batches (from 4 with AVX-512) run the SpMM on x^T (each
    nonzero broadcast against up to 128 batch entries), which skips the bitmap SpMM's decode:
    faster for fp32 x at 0.9 (and at 16 rows at 0.7). bf16 x is widened to fp32 here, so with more
    than 4 rows :func:`sparse_linear` (AMX where the CPU has it) is the faster kernel for it.
    """
    return torch.ops.prunekit.sparse_linear_csr16(x, values, col_indices, row_offsets, in_features, bias)


def sparse_conv1x1(x, values, bitmap, row_offsets, bias=None, activation: int = 0) -> torch.Tensor:
    """1x1 convolution (stride 1, no padding) of NCHW fp32 ``x`` with a bitmap-format
    (out_channels, in_channels) weight; ``activation`` 0 none, 1 ReLU, 2 ReLU6 (fused)."""
    return torch.ops.prunekit.sparse_conv1x1(x, values, bitmap, row_offsets, bias, activation)


def bitmap_to_tiles(values, bitmap, row_offsets, cols: int):
    """The bitmap format -> the tiled bitmap layout CUDA's kernels read, exactly (CPU and CUDA).

    Returns ``(tile_values, tile_bitmap, tile_offsets)``: tiles of 16 rows x 64 columns, each a
    bitmap-format block whose values start at a multiple of 8 (see
    :mod:`prunekit.formats.bitmap_tiles`). ``values`` fp32, bf16 or fp16. A bitmap that disagrees
    with its row offsets or marks columns past ``cols`` is an error.
    """
    return torch.ops.prunekit.bitmap_to_tiles(values, bitmap, row_offsets, cols)


def tiles_to_bitmap(tile_values, tile_bitmap, tile_offsets, rows: int, cols: int):
    """The tiled bitmap layout back to the bitmap format ``(values, bitmap, row_offsets)``, bit for
    bit; every tile is checked first (a corrupt one is an error naming it)."""
    return torch.ops.prunekit.tiles_to_bitmap(tile_values, tile_bitmap, tile_offsets, rows, cols)


def decompress_tiles(tile_values, tile_bitmap, tile_offsets, rows: int, cols: int) -> torch.Tensor:
    """The tiled bitmap layout to the dense (rows, cols) matrix, exactly (every tile checked)."""
    return torch.ops.prunekit.decompress_tiles(tile_values, tile_bitmap, tile_offsets, rows, cols)


def sparse_linear_tiles(x, tile_values, tile_bitmap, tile_offsets, out_features: int, in_features: int, bias=None,
                        kernel: str = "auto") -> torch.Tensor:
    """``F.linear(x, W, bias)`` with W in the tiled bitmap layout: prunekit's unstructured sparse
    GEMM on CUDA (fp32 sums; x in the values' dtype, fp16, bf16 or fp32; the result in it too).

    ``kernel``: "simt" (CUDA cores: a cost per nonzero) or "mma" (tensor cores, fragments decoded
    in registers) for batches of up to 16 rows, launched per 16 rows above; "gemm" (tensor cores,
    cp.async pipeline: larger batches); "dense" (exact expansion, then torch's GEMM); "auto" picks
    by dtype, batch and density. The tensor-core kernels take fp16/bf16 only. On CUDA the op never
    synchronises: a corrupt tile gives NaN rows (the conversions check the tiles). On CPU it walks
    the CUDA kernels' decode (for tests; the CPU's kernels take the bitmap format).
    """
    return torch.ops.prunekit.sparse_linear_tiles(x, tile_values, tile_bitmap, tile_offsets, out_features, in_features,
                                                  bias, kernel)


def sparse_conv1x1_tiles(x, tile_values, tile_bitmap, tile_offsets, out_channels: int, in_channels: int, bias=None,
                         activation: int = 0, kernel: str = "auto") -> torch.Tensor:
    """1x1 convolution (stride 1, no padding) of NCHW ``x`` with a tiled (out_channels,
    in_channels) weight through the same GEMMs (per image y = W x, the pixels as the batch);
    ``activation`` 0 none, 1 ReLU, 2 ReLU6 (fused); ``kernel`` as in :func:`sparse_linear_tiles`
    but without "mma"."""
    return torch.ops.prunekit.sparse_conv1x1_tiles(x, tile_values, tile_bitmap, tile_offsets, out_channels,
                                                   in_channels, bias, activation, kernel)


def sparse_linear_24(x, values, meta, in_features: int, bias=None, meta_sm90=None,
                     kernel: str = "auto") -> torch.Tensor:
    """``F.linear(x, W, bias)`` with W in the 2:4 layout of :func:`compress_24` (``values``
    (out_features, in_features / 2), int16 ``meta``), on CPU and CUDA.

    ``x``, ``values`` and ``bias`` share one dtype (fp16, bf16 or fp32); products and sums are fp32
    and the result has x's dtype. out_features and in_features are multiples of 32 (the layout).
    On CUDA, batches of 1-16 rows run a kernel that reads the compressed weight once, straight
    from memory; larger batches run CUTLASS's sparse tensor-core GEMM (CUTLASS 2.x on sm_80/sm_89,
    3.x on sm_90a, where the metadata is first converted to Hopper's layout: pass
    ``meta_sm90=meta_24_to_sm90(meta)``, computed once, to skip that per call). fp32 weights, and
    on sm_8x in_features that are not a multiple of 64 at more than 16 rows, run a dense product
    of the decompressed weight. On CPU the op always decompresses (the CPU's fast path for a 2:4
    weight is :func:`sparse_linear` on its bitmap view). Metadata must come from compress_24:
    corrupt codes give wrong numbers, never an out-of-range access.

    ``kernel`` forces one path for tests and comparisons: "decode" (1-16 rows), "cutlass_sm80"
    (any sm_80+ GPU, in_features % 64 == 0), "cutlass_sm90" (sm_90 with an sm_90a build), "dense";
    the default "auto" picks as above. On CPU only "auto" and "dense" exist.
    """
    return torch.ops.prunekit.sparse_linear_24(x, values, meta, in_features, bias, meta_sm90, kernel)


def meta_24_to_sm90(meta: torch.Tensor) -> torch.Tensor:
    """The int16 2:4 metadata of :func:`compress_24` (fp16 or bf16 values) in the layout of the
    Hopper (sm_90a) sparse GEMM of :func:`sparse_linear_24`: a uint8 tensor of shape
    (out_features rounded up to 64, in_features rounded up to 128 / 8), converted exactly (a
    permutation of the 16-bit words, padding zero). CPU and CUDA.
    """
    return torch.ops.prunekit.meta_24_to_sm90(meta)


def admm_solve(weight: torch.Tensor, hessian: torch.Tensor, inverse: torch.Tensor, keep: torch.Tensor | None,
               sparsity: float, n: int, m: int, per_row: bool, rho: float, iterations: int, prune_iterations: int,
               pcg_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ADMM reconstruction of a sparse weight: min_B tr((B - W) H (B - W)^T) over B on a sparse
    support, then conjugate gradients on that support. Returns ``(pruned, keep)``.

    ``weight`` (rows, cols) and the symmetric positive definite ``hessian`` (cols, cols) are fp32
    on one device; ``inverse`` is (hessian + rho I)^-1. ``keep`` (bool, the weight's shape) fixes
    the support; None projects onto the ``sparsity`` (exactly round(sparsity * numel) pruned by
    |B + U|, per row when ``per_row``, reached along a cubic schedule over ``prune_iterations``)
    or onto n of every m inputs (``m`` > 0). ``iterations`` ADMM steps, ``pcg_iterations``
    conjugate-gradient steps (Jacobi preconditioner). See :mod:`prunekit.solvers.admm`, which
    scales and factorises the Hessian.
    """
    return torch.ops.prunekit.admm_solve(weight, hessian, inverse, keep, sparsity, n, m, per_row, rho, iterations,
                                         prune_iterations, pcg_iterations)
