"""Training-time pruning: the gradual cubic schedule of Zhu & Gupta (2017) and iterative magnitude
pruning with weight rewinding (the lottery-ticket procedure of Frankle et al.).

Both keep boolean masks over the prunable layers' weights and re-apply them after every optimizer
step (through ``Optimizer.register_step_post_hook``), so pruned weights stay exactly zero while
training, whatever the optimizer's momentum or weight decay does to them.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from .allocation import global_prune_counts
from .calibrate.pipeline import PrunableLayer, find_prunable_layers
from .solvers.masks import check_sparsity, keep_lowest_pruned, prune_count

logger = logging.getLogger(__name__)


def cubic_sparsity(step: int, *, final_sparsity: float, total_steps: int, initial_sparsity: float = 0.0,
                   start_step: int = 0, frequency: int = 1) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3.

    ``total_steps`` is n * dt, the length of the ramp; ``frequency`` is dt: the sparsity changes
    only every ``frequency`` steps. Before ``start_step`` the sparsity is ``initial_sparsity``,
    after the ramp ``final_sparsity``.

    >>> cubic_sparsity(5, final_sparsity=0.9, total_steps=10)
    0.7875
    """
    initial_sparsity = check_sparsity(initial_sparsity, "cubic_sparsity: initial_sparsity")
    final_sparsity = check_sparsity(final_sparsity, "cubic_sparsity: final_sparsity")
    if total_steps < 1:
        raise ValueError(f"cubic_sparsity: total_steps must be >= 1, but got {total_steps}")
    if frequency < 1:
        raise ValueError(f"cubic_sparsity: frequency must be >= 1, but got {frequency}")
    if step <= start_step:
        return initial_sparsity
    elapsed = (step - start_step) // frequency * frequency
    if elapsed >= total_steps:
        return final_sparsity
    progress = elapsed / total_steps
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - progress) ** 3


def _select(model: nn.Module, ignore: Sequence[str]) -> dict[str, PrunableLayer]:
    layers = {name: layer for name, layer in find_prunable_layers(model).items()
              if not any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in ignore)}
    if not layers:
        raise ValueError(f"no prunable layers (Linear, Conv2d, Conv1D) in {type(model).__name__} after "
                         f"ignore={list(ignore)}")
    return layers


class _MaskedLayers:
    """Masks over layers' weights, applied after every step of the attached optimizers."""

    def __init__(self, model: nn.Module, ignore: Sequence[str]):
        self.model = model
        self.layers = _select(model, ignore)
        self.masks = {name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in self.layers.items()}
        self._handles = []

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, layer in self.layers.items():
            layer.weight.mul_(self.masks[name])

    def attach(self, optimizer: torch.optim.Optimizer):
        """Re-apply the masks after every ``optimizer.step()``; returns the hook handle."""
        handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self._after_step())
        self._handles.append(handle)
        return handle

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _after_step(self) -> None:
        self.apply_masks()

    def sparsity(self) -> float:
        total = sum(mask.numel() for mask in self.masks.values())
        return sum(int((~mask).sum()) for mask in self.masks.values()) / total

    def _magnitude_masks(self, sparsity: float, scope: str) -> None:
        """Masks pruning the smallest |W| at ``sparsity``; pruned weights stay pruned (their |W|
        counts as 0, below any live weight)."""
        scores = {name: layer.weight.detach().abs().float() * self.masks[name] for name, layer in self.layers.items()}
        if scope == "global":
            counts = global_prune_counts(scores, sparsity, min_keep=0.0)
        else:
            counts = {name: prune_count(s.numel(), sparsity) for name, s in scores.items()}
        for name, score in scores.items():
            # Already-pruned weights first (ties in index order among zeros would break the
            # monotonicity), then the smallest live ones.
            already = ~self.masks[name]
            rank = torch.where(already, torch.full_like(score, -1.0), score)
            self.masks[name] = keep_lowest_pruned(rank, max(counts[name], int(already.sum())))


class GradualPruner(_MaskedLayers):
    """Gradual magnitude pruning on Zhu & Gupta's cubic schedule during training.

    >>> pruner = GradualPruner(model, optimizer, final_sparsity=0.9, total_steps=1000, frequency=100)
    >>> for batch in data:  # each optimizer.step() advances the schedule and re-applies the masks
    ...     loss(model(batch)).backward(); optimizer.step(); optimizer.zero_grad()

    Every ``frequency`` steps from ``start_step`` the smallest-magnitude weights are pruned up to
    the schedule's sparsity (per layer, or with one threshold across layers when
    ``scope="global"``); pruned weights never come back.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, final_sparsity: float,
                 total_steps: int, initial_sparsity: float = 0.0, start_step: int = 0, frequency: int = 1,
                 scope: str = "layer", ignore: Sequence[str] = ()):
        if scope not in ("layer", "global"):
            raise ValueError(f"GradualPruner: scope must be 'layer' or 'global', but got {scope!r}")
        super().__init__(model, ignore)
        self.schedule = dict(final_sparsity=final_sparsity, total_steps=total_steps,
                             initial_sparsity=initial_sparsity, start_step=start_step, frequency=frequency)
        cubic_sparsity(0, **self.schedule)  # validates the schedule now
        self.scope = scope
        self.step_count = 0
        self.current_sparsity = 0.0
        self._update(force=True)
        if optimizer is not None:
            self.attach(optimizer)

    def target(self, step: int | None = None) -> float:
        return cubic_sparsity(self.step_count if step is None else step, **self.schedule)

    def _update(self, force: bool = False) -> None:
        target = self.target()
        if force or not math.isclose(target, self.current_sparsity):
            self._magnitude_masks(target, self.scope)
            self.current_sparsity = target
            logger.debug("GradualPruner: step %d, sparsity %.4f", self.step_count, target)
        self.apply_masks()

    def step(self) -> None:
        """Advance the schedule by one step (called by the attached optimizer's post-step hook)."""
        self.step_count += 1
        self._update()

    def _after_step(self) -> None:
        self.step()


class IterativeMagnitudePruning(_MaskedLayers):
    """Iterative magnitude pruning with weight rewinding (lottery tickets).

    >>> imp = IterativeMagnitudePruning(model, rate=0.2)      # rewinds to the weights at creation
    >>> imp.attach(optimizer)                                 # keep masks through training
    >>> for round in range(5):
    ...     train(model); imp.prune_and_rewind()               # sparsity 1 - 0.8**(round + 1)

    Each round prunes ``rate`` of the remaining weights by magnitude (per layer, or globally with
    ``scope="global"``), then rewinds the surviving weights to the rewind point: the weights at
    creation, or those saved by :meth:`save_rewind_point` (e.g. after k iterations of training,
    "late rewinding"). Other parameters (biases, norms) are rewound too when ``rewind_all``.
    """

    def __init__(self, model: nn.Module, *, rate: float = 0.2, scope: str = "global", rewind_all: bool = True,
                 ignore: Sequence[str] = ()):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"IterativeMagnitudePruning: rate must be in (0, 1), but got {rate}")
        if scope not in ("layer", "global"):
            raise ValueError(f"IterativeMagnitudePruning: scope must be 'layer' or 'global', but got {scope!r}")
        super().__init__(model, ignore)
        self.rate = rate
        self.scope = scope
        self.rewind_all = rewind_all
        self.rounds = 0
        self.save_rewind_point()

    def save_rewind_point(self) -> None:
        """Remember the current weights as the ones surviving weights rewind to."""
        self.rewind_state = copy.deepcopy({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def target(self, rounds: int | None = None) -> float:
        """Sparsity after ``rounds`` rounds: 1 - (1 - rate)^rounds."""
        return 1 - (1 - self.rate) ** (self.rounds if rounds is None else rounds)

    @torch.no_grad()
    def prune_and_rewind(self) -> float:
        """One round: prune, rewind, re-apply the masks. Returns the new sparsity."""
        self.rounds += 1
        self._magnitude_masks(self.target(), self.scope)
        if self.rewind_all:
            self.model.load_state_dict(self.rewind_state)
        else:
            for name, layer in self.layers.items():
                layer.weight.copy_(self.rewind_state[name + ".weight"])
        self.apply_masks()
        logger.info("IterativeMagnitudePruning: round %d, sparsity %.4f", self.rounds, self.sparsity())
        return self.sparsity()
