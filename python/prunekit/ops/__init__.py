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
