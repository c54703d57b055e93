"""GBLM-Pruner (Das et al., 2023): Wanda's |W| * ||X|| plus a gradient term |W| * ||G||, where
||G|| is the L2 norm, over calibration samples, of each weight's gradient of the model's loss."""

import torch

from .masks import select_mask
from .wanda import wanda_scores


def gblm_scores(weight: torch.Tensor, input_norms: torch.Tensor, gradient_norms: torch.Tensor,
                *, gradient_scale: float = 100.0) -> torch.Tensor:
    """|W| * (gradient_scale * ||G|| + ||X||) in fp32. ``gradient_norms`` has ``weight``'s shape."""
    if gradient_norms.shape != weight.shape:
        raise ValueError(f"gblm: gradient_norms must have the weight's shape {tuple(weight.shape)}, "
                         f"but got {tuple(gradient_norms.shape)}")
    gradient_term = weight.detach().abs().to(torch.float32) * gradient_norms.to(torch.float32)
    return wanda_scores(weight, input_norms) + gradient_scale * gradient_term


def gblm(weight: torch.Tensor, input_norms: torch.Tensor, gradient_norms: torch.Tensor, *,
         sparsity: float | None = None, pattern=None, gradient_scale: float = 100.0,
         name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out_features, in_features) by GBLM-Pruner scores, compared per output row
    like Wanda. Returns ``(pruned_weight, keep_mask)``; the input is not modified."""
    scores = gblm_scores(weight, input_norms, gradient_norms, gradient_scale=gradient_scale)
    keep = select_mask(scores, sparsity=sparsity, pattern=pattern, per_row=True, name=name)
    return weight.detach() * keep, keep
