"""Random pruning: uniformly random scores, the baseline every criterion must beat."""

import torch

from .masks import select_mask


def random_scores(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) scores of ``weight``'s shape, drawn on the CPU from ``generator`` (so the
    same seed gives the same mask on every device)."""
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)


def random(weight: torch.Tensor, *, sparsity: float | None = None, pattern=None,
           generator: torch.Generator | None = None, name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a uniformly random set of exactly round(sparsity * numel) weights (or m - n of every
    m for N:M). Returns ``(pruned_weight, keep_mask)``; the input is not modified."""
    keep = select_mask(random_scores(weight, generator), sparsity=sparsity, pattern=pattern, name=name)
    return weight.detach() * keep, keep
