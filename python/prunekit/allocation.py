"""Allocation of a target sparsity across layers.

- ``uniform_allocation``: every layer at the target.
- ``global_allocation``: one importance threshold across all layers (by default on |W|), so the
  model as a whole prunes exactly round(target * total) weights, with every layer keeping at least
  ``min_keep`` of its weights (the guard against layer collapse).
- ``owl_allocation``: OWL (Yin et al., 2024): groups (transformer blocks) with a larger share of
  outlier scores (|W| * ||X|| above ``outlier_threshold`` times the group's mean) keep more weights;
  the group sparsities span target +- ``lam`` and their parameter-weighted mean is the target;
  ``owl_layer_sparsities`` gathers those scores from a calibration walk.
"""

import logging
import math
from collections.abc import Iterable, Mapping

import torch

from .solvers.masks import check_sparsity, prune_count
from .solvers.wanda import wanda_scores

logger = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "global", "owl")


def uniform_allocation(layer_sizes: Mapping[str, int], sparsity: float) -> dict[str, float]:
    """Every layer at ``sparsity``."""
    sparsity = check_sparsity(sparsity)
    return {name: sparsity for name in layer_sizes}


def global_prune_counts(scores: Mapping[str, torch.Tensor], sparsity: float, *,
                        min_keep: float = 0.01) -> dict[str, int]:
    """How many weights each layer prunes under one global threshold on ``scores``.

    Exactly round(sparsity * total) weights are pruned across all layers: those with the lowest
    scores, except that a layer never prunes more than (1 - min_keep) of its weights; ties at the
    threshold go to earlier layers first. Scores of different layers must be comparable (|W| is).
    """
    sparsity = check_sparsity(sparsity)
    if not 0.0 <= min_keep <= 1.0:
        raise ValueError(f"global allocation: min_keep must be in [0, 1], but got {min_keep}")
    if not scores:
        raise ValueError("global allocation: no layers to allocate over")
    sorted_scores = {name: torch.sort(s.detach().reshape(-1).to(torch.float32)).values for name, s in scores.items()}
    for name, values in sorted_scores.items():
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise ValueError(f"global allocation: scores of layer {name} hold NaN or Inf")
    caps = {name: values.numel() - math.ceil(min_keep * values.numel()) for name, values in sorted_scores.items()}
    total = sum(values.numel() for values in sorted_scores.values())
    target = prune_count(total, sparsity)
    if target > sum(caps.values()):
        raise ValueError(f"global allocation: sparsity {sparsity} cannot be reached while every layer keeps "
                         f"at least min_keep={min_keep} of its weights; lower min_keep or the sparsity")

    def pruned_below(threshold: float, inclusive: bool) -> dict[str, int]:
        side = "right" if inclusive else "left"
        limit = torch.tensor([threshold], dtype=torch.float32)
        return {name: min(int(torch.searchsorted(values, limit.to(values.device), side=side)), caps[name])
                for name, values in sorted_scores.items()}

    # Bisect on the distinct score values: the smallest threshold t with
    # sum_l min(#{score_l <= t}, cap_l) >= target.
    candidates = torch.unique(torch.cat([values.cpu() for values in sorted_scores.values()]))
    low, high = 0, candidates.numel() - 1
    while low < high:
        mid = (low + high) // 2
        if sum(pruned_below(float(candidates[mid]), True).values()) >= target:
            high = mid
        else:
            low = mid + 1
    threshold = float(candidates[low]) if target > 0 else -math.inf
    counts = pruned_below(threshold, False) if target > 0 else dict.fromkeys(sorted_scores, 0)
    remaining = target - sum(counts.values())
    if remaining > 0:  # ties at the threshold, given out in layer order
        at_or_below = pruned_below(threshold, True)
        for name in sorted_scores:
            extra = min(remaining, at_or_below[name] - counts[name])
            counts[name] += extra
            remaining -= extra
    return counts


def global_allocation(scores: Mapping[str, torch.Tensor], sparsity: float, *,
                      min_keep: float = 0.01) -> dict[str, float]:
    """Per-layer sparsities (pruned / numel) of a global threshold on ``scores``; see
    :func:`global_prune_counts`. Each layer then prunes exactly its count."""
    counts = global_prune_counts(scores, sparsity, min_keep=min_keep)
    return {name: counts[name] / scores[name].numel() for name in scores}


def outlier_ratio(scores: list[torch.Tensor], outlier_threshold: float) -> float:
    """Share of the pooled ``scores`` above ``outlier_threshold`` times their mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.to(torch.float64).sum()) for s in scores) / total
    above = sum(int((s > outlier_threshold * mean).sum()) for s in scores)
    return above / total


def owl_allocation(group_scores: Mapping[str, list[torch.Tensor]], sparsity: float, *,
                   outlier_threshold: float = 5.0, lam: float = 0.08,
                   group_sizes: Mapping[str, int] | None = None) -> dict[str, float]:
    """OWL group sparsities from each group's Wanda scores (|W| * ||X|| of all its layers).

    Outlier ratios are min-max normalised into [0, 2 * lam], so a group's density is its
    normalised ratio shifted so that the densities' mean (weighted by ``group_sizes``, parameter
    counts, when given) is 1 - sparsity. Returns group -> sparsity, clamped into [0, 1).
    """
    sparsity = check_sparsity(sparsity)
    if outlier_threshold <= 0:
        raise ValueError(f"owl allocation: outlier_threshold (M) must be > 0, but got {outlier_threshold}")
    if not 0 <= lam < 1:
        raise ValueError(f"owl allocation: lam must be in [0, 1), but got {lam}")
    if not group_scores:
        raise ValueError("owl allocation: no groups to allocate over")
    names = list(group_scores)
    ratios = torch.tensor([outlier_ratio(group_scores[g], outlier_threshold) for g in names], dtype=torch.float64)
    if group_sizes is None:
        weights = torch.ones(len(names), dtype=torch.float64)
    else:
        weights = torch.tensor([float(group_sizes[g]) for g in names], dtype=torch.float64)
    spread = ratios.max() - ratios.min()
    if spread > 0:
        normalised = (ratios - ratios.min()) / spread * (2 * lam)
    else:
        normalised = torch.zeros_like(ratios)
    mean = (normalised * weights).sum() / weights.sum()
    density = normalised - mean + (1 - sparsity)
    sparsities = (1 - density).clamp(0.0, 1.0 - 1e-6)
    logger.info("OWL outlier ratios %s -> sparsities %s", [round(float(r), 4) for r in ratios],
                [round(float(s), 4) for s in sparsities])
    return {g: float(s) for g, s in zip(names, sparsities)}


def owl_layer_sparsities(steps: Iterable, sparsity: float, *, outlier_threshold: float = 5.0,
                         lam: float = 0.08) -> dict[str, float]:
    """OWL per block over a dense calibration walk (the steps of
    :func:`prunekit.calibrate.walk_blocks`): each block's |W| * ||X|| scores give its sparsity,
    which every layer of the block takes; without a block list every layer is its own group."""
    group_scores: dict[str, list[torch.Tensor]] = {}
    group_sizes: dict[str, int] = {}
    group_of: dict[str, str] = {}
    for step in steps:
        for name, layer in step.layers.items():
            group = step.name if step.index >= 0 else name
            score = wanda_scores(layer.matrix(), step.stats[name].input_norms).cpu()
            group_scores.setdefault(group, []).append(score)
            group_sizes[group] = group_sizes.get(group, 0) + layer.weight.numel()
            group_of[name] = group
    group_sparsity = owl_allocation(group_scores, sparsity, outlier_threshold=outlier_threshold, lam=lam,
                                    group_sizes=group_sizes)
    return {name: group_sparsity[group] for name, group in group_of.items()}
