"""Which format a checkpoint stores a weight in: the smallest exact one.

What is stored and what runs are separate choices (:mod:`prunekit.io` writes, :mod:`prunekit.nn.auto`
picks the runtime format at load). Storage only asks each registered format how many bytes its
checkpoint entry would take (:meth:`~prunekit.formats.WeightFormat.checkpoint_nbytes`) and takes
the fewest; ties go to the earlier of :data:`STORAGE_PREFERENCE` ("2:4" keeps its structure for
the 2:4 kernels; dense needs no conversion at all).
"""

from __future__ import annotations

import torch

from .base import get, names

# Tie order among equally small formats (formats registered later come after these).
STORAGE_PREFERENCE = ("2:4", "unstructured", "csr16", "dense")


def _is_24(matrix: torch.Tensor) -> bool:
    rows, cols = matrix.shape
    if cols % 4:
        return False
    return not bool(((matrix.reshape(rows, cols // 4, 4) != 0).sum(-1) > 2).any())


def checkpoint_sizes(matrix: torch.Tensor, nonzeros: int | None = None) -> dict[str, int]:
    """Bytes of the checkpoint entry of a (rows, cols) ``matrix`` in each format that holds it
    exactly, in :data:`STORAGE_PREFERENCE` order (``nonzeros``: its count, when already known).
    A zero is any value equal to 0 (-0.0 included: the compressed formats store it as +0.0,
    which every product and sum treats alike)."""
    if matrix.dim() != 2:
        raise ValueError(f"checkpoint_sizes: argument 'matrix' must be 2-D, but got shape {tuple(matrix.shape)}")
    rows, cols = matrix.shape
    nonzeros = int(torch.count_nonzero(matrix)) if nonzeros is None else int(nonzeros)
    is_24 = _is_24(matrix)
    order = [name for name in STORAGE_PREFERENCE if name in names()]
    order += [name for name in names() if name not in order]
    sizes = {}
    for name in order:
        size = get(name).checkpoint_nbytes(rows, cols, matrix.dtype, nonzeros, is_24)
        if size is not None:
            sizes[name] = size
    return sizes


def smallest_storage(matrix: torch.Tensor, nonzeros: int | None = None) -> tuple[str, int]:
    """(format, bytes) of the smallest exact checkpoint entry for ``matrix`` (ties: the earlier of
    :data:`STORAGE_PREFERENCE`); "dense" when no compressed format is smaller."""
    sizes = checkpoint_sizes(matrix, nonzeros)
    best = min(sizes.values())
    name = next(name for name, size in sizes.items() if size == best)
    return name, best
