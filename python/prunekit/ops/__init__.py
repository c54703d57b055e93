"""Typed wrappers of the ``torch.ops.prunekit`` ops.

Each wrapper calls the registered op, so it dispatches to the CPU or CUDA kernel, works under
``torch.compile(fullgraph=True)`` (through the fakes in ``_fake.py``) and raises the same errors.
Pure-PyTorch references of every op live in ``prunekit.ops._reference`` (tests and docs only).
"""

import torch

from . import _fake  # noqa: F401  (registers the fake impls)

__all__ = ["nm_mask", "compress_24", "decompress_24"]


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
