"""Wanda (Sun et al., 2023): prune by |W_ij| * ||X_j||, the weight times the L2 norm of its input
feature over the calibration tokens, compared within each output row."""

import torch

from .masks import select_mask


def input_norms_from_hessian(hessian: torch.Tensor, n_samples: int) -> torch.Tensor:
    """||X_j|| over the calibration rows from a Hessian H = 2/n * sum x x^T (its diagonal)."""
    if n_samples <= 0:
        raise ValueError(f"input_norms_from_hessian: n_samples must be > 0, but got {n_samples}")
    return (torch.diagonal(hessian).to(torch.float32).clamp_min(0) * (n_samples / 2)).sqrt()


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X|| (broadcast over rows) in fp32."""
    if input_norms.dim() != 1 or input_norms.shape[0] != weight.shape[1]:
        raise ValueError(f"wanda: input_norms must have shape ({weight.shape[1]},) to match weight "
                         f"{tuple(weight.shape)}, but got {tuple(input_norms.shape)}")
    return weight.detach().abs().to(torch.float32) * input_norms.to(torch.float32, copy=False).unsqueeze(0)


def wanda(weight: torch.Tensor, input_norms: torch.Tensor, *, sparsity: float | None = None,
          pattern=None, name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out_features, in_features) by Wanda scores.

    ``input_norms`` is the L2 norm of each input feature over the calibration tokens. Unstructured
    masks compare scores within each output row (as in the paper) and prune exactly
    round(sparsity * numel) weights; N:M keeps the n best of every m consecutive inputs.
    Returns ``(pruned_weight, keep_mask)``; the input is not modified.
    """
    scores = wanda_scores(weight, input_norms)
    keep = select_mask(scores, sparsity=sparsity, pattern=pattern, per_row=True, name=name)
    return weight.detach() * keep, keep
