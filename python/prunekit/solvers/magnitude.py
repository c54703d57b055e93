"""Magnitude pruning: the importance of a weight is its absolute value, compared per layer."""

import torch

from .masks import select_mask


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W| in fp32, the score of magnitude pruning."""
    return weight.detach().abs().to(torch.float32)


def magnitude(weight: torch.Tensor, *, sparsity: float | None = None, pattern=None,
              name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune the smallest-magnitude weights of a 2-D ``weight`` (out_features, in_features).

    Unstructured: exactly round(sparsity * numel) weights, compared across the layer. N:M
    (``pattern`` (n, m) or "n:m"): the n largest of every m consecutive inputs are kept.
    Returns ``(pruned_weight, keep_mask)``; the input is not modified.
    """
    keep = select_mask(magnitude_scores(weight), sparsity=sparsity, pattern=pattern, name=name)
    return weight.detach() * keep, keep
