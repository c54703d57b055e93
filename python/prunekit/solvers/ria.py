"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024): score each weight by its
share of its output row's and of its input column's absolute weight, times the L2 norm of its
input feature to a power: (|W_ij| / sum_j |W_ij| + |W_ij| / sum_i |W_ij|) * ||X_j||^a, compared
within each output row (as the paper's unstructured and N:M masks)."""

import math

import torch

from .masks import select_mask

DEFAULT_POWER = 0.5


def check_power(power, what: str = "ria_power") -> float:
    """The activation exponent as a float in [0, 4], or a ValueError naming ``what``."""
    if isinstance(power, bool) or not isinstance(power, (int, float)) or math.isnan(float(power)) or \
            not 0.0 <= float(power) <= 4.0:
        raise ValueError(f"{what}: expected a number in [0, 4] (the paper uses 0.5), but got {power!r}")
    return float(power)


def ria_scores(weight: torch.Tensor, input_norms: torch.Tensor, power: float = DEFAULT_POWER) -> torch.Tensor:
    """(|W| / row sums of |W| + |W| / column sums of |W|) * ||X||^power in fp32. A row or column of
    zeros contributes zero (its weights are all zero)."""
    power = check_power(power)
    if weight.dim() != 2:
        raise ValueError(f"ria: weight must be 2-D (out_features, in_features), but got shape {tuple(weight.shape)}")
    if input_norms.dim() != 1 or input_norms.shape[0] != weight.shape[1]:
        raise ValueError(f"ria: input_norms must have shape ({weight.shape[1]},) to match weight "
                         f"{tuple(weight.shape)}, but got {tuple(input_norms.shape)}")
    magnitude = weight.detach().abs().to(torch.float32)
    row_sums = magnitude.sum(dim=1, keepdim=True)
    column_sums = magnitude.sum(dim=0, keepdim=True)
    relative = magnitude / torch.where(row_sums > 0, row_sums, 1) + magnitude / torch.where(column_sums > 0,
                                                                                           column_sums, 1)
    activation = input_norms.to(device=magnitude.device, dtype=torch.float32).clamp_min(0).pow(power)
    return relative * activation.unsqueeze(0)


def ria(weight: torch.Tensor, input_norms: torch.Tensor, *, sparsity: float | None = None, pattern=None,
        power: float = DEFAULT_POWER, name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out_features, in_features) by RIA scores, compared within each output row
    (unstructured: exactly round(sparsity * numel) pruned) or n of every m inputs kept (N:M).
    Returns ``(pruned_weight, keep_mask)``; the input is not modified."""
    scores = ria_scores(weight, input_norms, power)
    keep = select_mask(scores, sparsity=sparsity, pattern=pattern, per_row=True, name=name)
    return weight.detach() * keep, keep
