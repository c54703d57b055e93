"""Keep-mask selection shared by the score-based criteria (magnitude, Wanda, GBLM, random).

A criterion turns a layer's weight (and statistics) into a score per weight; these functions turn
scores into a boolean keep-mask. Every mask prunes an exact count: ``round(sparsity * numel)``
entries per layer (unstructured, also when compared per output row), or exactly ``m - n`` of every
``m`` consecutive inputs (N:M, through the ``prunekit::nm_mask`` op). Ties are broken by index so
masks are deterministic.
"""

import math

import torch

from .. import ops
from .._finite import all_finite
from .patterns import parse_pattern

SELECTION_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
"""Score dtypes that ``prunekit::nm_mask`` selects in (the per-row selection runs on it)."""


def check_sparsity(sparsity, what: str = "sparsity") -> float:
    """A sparsity as a float in [0, 1), or a ValueError naming ``what``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"{what}: expected a number in [0, 1), but got {sparsity!r}")
    value = float(sparsity)
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what}: expected a number in [0, 1), but got {sparsity!r}")
    return value


def prune_count(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a layer at ``sparsity`` prunes: round(sparsity * numel)."""
    return min(numel, int(round(sparsity * numel)))


def _check_scores(scores: torch.Tensor, name: str) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{name}: scores must be 2-D (out_features, in_features), but got shape "
                         f"{tuple(scores.shape)}")
    if scores.is_floating_point() and not all_finite(scores.detach()):
        raise ValueError(f"{name}: importance scores hold NaN or Inf (non-finite weights or "
                         "calibration activations)")


def _lowest_in_rows(scores: torch.Tensor, count: int) -> torch.Tensor:
    """(rows, cols) bool: True at the ``count`` lowest entries of each row, ties going to the lower
    column index: the first ``count`` of a stable ascending sort. On CPU, for finite fp32, fp64,
    fp16 and bf16 scores, found by selection in linear time (``nm_mask`` of the negated scores, one
    group per row); otherwise by that sort (NaN last, as it orders them)."""
    rows, cols = scores.shape
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if count >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    if scores.device.type == "cpu" and scores.dtype in SELECTION_DTYPES and all_finite(scores.detach()):
        # keeping the count largest of -scores (ties: lower index) prunes the count lowest of scores
        return ops.nm_mask(torch.neg(scores.detach()).contiguous(), count, cols)
    lowest = torch.zeros_like(scores, dtype=torch.bool)
    return lowest.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :count], True)


def keep_lowest_pruned(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask pruning the ``count`` lowest scores of the whole tensor (ties: lower flat index)."""
    return ~_lowest_in_rows(scores.reshape(1, -1), count).reshape(scores.shape)


def keep_lowest_pruned_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask pruning ``count`` entries in total, compared within each row (Wanda's grouping).

    Every row prunes ``count // rows`` of its lowest scores; the ``count % rows`` remaining
    prunes go to the rows whose next-lowest score is smallest, so the layer hits the exact count
    even when it is not a multiple of the row count. Ties go to the lower index, as a stable sort
    orders them.
    """
    rows, cols = scores.shape
    if count <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    per_row, extra = divmod(count, rows)
    pruned = _lowest_in_rows(scores, per_row)
    if extra:
        # Each row's next-lowest score: the lowest kept one (its first column among equals).
        values = scores if scores.is_floating_point() else scores.to(torch.float64)
        remaining = values.masked_fill(pruned, float("inf"))
        next_best, column = remaining.min(dim=1)
        rows_with_extra = _lowest_in_rows(next_best.reshape(1, -1), extra).reshape(-1).nonzero().reshape(-1)
        pruned[rows_with_extra, column[rows_with_extra]] = True
    return ~pruned


def select_mask(scores: torch.Tensor, *, sparsity: float | None = None, pattern=None,
                per_row: bool = False, name: str = "layer") -> torch.Tensor:
    """Keep-mask from a (out_features, in_features) score matrix (higher score = more important).

    ``pattern`` None: unstructured, prunes exactly round(sparsity * numel) entries, compared
    across the whole layer, or within each output row when ``per_row``. ``pattern`` (n, m) or
    "n:m": keeps the n highest of every m consecutive inputs (``sparsity`` must then be None or
    1 - n/m).
    """
    _check_scores(scores, name)
    nm = parse_pattern(pattern)
    if nm is not None:
        n, m = nm
        if sparsity is not None and not math.isclose(float(sparsity), 1 - n / m):
            raise ValueError(f"{name}: sparsity {sparsity} contradicts pattern {n}:{m} (sparsity "
                             f"{1 - n / m:g}); pass one of them")
        if scores.shape[1] % m:
            raise ValueError(f"{name}: in_features must be a multiple of m={m} for an {n}:{m} pattern, "
                             f"but got {scores.shape[1]}")
        return ops.nm_mask(scores.to(torch.float32).contiguous(), n, m)
    sparsity = check_sparsity(0.5 if sparsity is None else sparsity, f"{name}: sparsity")
    count = prune_count(scores.numel(), sparsity)
    if per_row:
        return keep_lowest_pruned_per_row(scores, count)
    return keep_lowest_pruned(scores, count)
