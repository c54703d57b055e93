"""Refitting a pruned model's kept weights to the dense model: ``prunekit.reconstruct``.

Pruning by a criterion (magnitude, Wanda, RIA) zeroes weights and leaves the others as they were,
so each layer's output drifts from the dense layer's. :func:`reconstruct` keeps the pruned model's
sparsity pattern (every exact zero stays zero) and refits what remains to the dense model, block
by block on calibration data, with the same machinery as :func:`prunekit.prune`:

1. a least-squares update of each pruned linear's kept weights towards the dense layer's outputs
   on the layer's inputs in the partly reconstructed model (``min ||X W^T - X W_s^T||^2`` on the
   fixed support; the ADMM solver's preconditioned conjugate gradients, ``PruneConfig(update=
   "admm")``);
2. then ``refine_steps`` Adam steps per block towards the dense block's outputs (the masks fixed,
   normalisation weights trained too: ``PruneConfig(refine="block")``).

It is a cheap first stage of recovery: on SmolLM2-135M at 50% (Wanda) it does in two minutes what
global distillation (:func:`prunekit.recover`) does in many more steps, and the distillation that
follows it starts from there (``prunekit recover --reconstruct``; README, "Recovery").
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ._autocast import autocast_dtype
from ._names import dtype_name
from ._measure import count_parameters, perplexity

__all__ = ["reconstruct", "ReconstructionReport"]


@dataclass
class ReconstructionReport:
    """What :func:`reconstruct` did (JSON-serialisable with :meth:`to_dict`)."""

    layers: int
    """Pruned linears refitted (those with at least one exact zero)."""
    masked_weights: int
    """Weights held at exactly zero (the pruned ones)."""
    calibration_items: int
    refine_steps: int
    parameters: int
    pruned_weights_still_zero: bool = True
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    """Seconds per stage (exclusive), as in :class:`prunekit.PruneReport`."""
    autocast: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        text = (f"reconstruct: {self.layers} pruned layers refitted on {self.calibration_items} items "
                f"(least squares, then {self.refine_steps} block-refinement steps), {self.masked_weights:,} pruned "
                f"weights kept at zero ({'ok' if self.pruned_weights_still_zero else 'VIOLATED'}); "
                f"{self.seconds:.1f} s")
        if self.perplexity_before is not None:
            text += f"; perplexity {self.perplexity_before:.2f} -> {self.perplexity_after:.2f}"
        return text


def _check_same_parameters(model: nn.Module, teacher: nn.Module) -> None:
    ours = {name: tuple(p.shape) for name, p in model.named_parameters()}
    theirs = {name: tuple(p.shape) for name, p in teacher.named_parameters()}
    if ours.keys() != theirs.keys():
        missing = sorted(theirs.keys() - ours.keys()) or sorted(ours.keys() - theirs.keys())
        raise ValueError(f"reconstruct: teacher: expected the model before pruning (the same parameters), but the "
                         f"parameter names differ (e.g. {missing[0]}); structured pruning changes them, "
                         "reconstruct refits masks only")
    for name, shape in ours.items():
        if theirs[name] != shape:
            raise ValueError(f"reconstruct: teacher: expected {name} of shape {shape} (the model's), but got "
                             f"{theirs[name]}")


def reconstruct(model: nn.Module, teacher: nn.Module, calib, *, refine_steps: int = 72, refine_lr: float = 1e-3,
                refine_batch: int | None = 4, refine_validation: float = 0.0625, refine_validate_every: int = 12,
                refine_norms: bool = True,
                percdamp: float = 1.0, pcg_iterations: int = 10, autocast=None, eval_batches=None,
                progress: bool = True) -> ReconstructionReport:
    """Refits ``model``'s kept weights, in place, to ``teacher`` (the same model before pruning),
    keeping every exact zero of ``model``'s prunable layers (linear, convolution) at zero.

    - ``calib``: calibration batches as for :func:`prunekit.prune` (e.g. a slice of
      :func:`prunekit.recovery.teacher_samples`; their teacher targets are ignored).
    - ``percdamp``, ``pcg_iterations``: the least-squares step's damping (a ridge towards the dense
      weights, ``percdamp`` times each input's Hessian diagonal) and conjugate-gradient iterations.
      Inputs that are zero on every calibration token keep their weights as they are.
    - ``refine_steps`` (0: none), ``refine_lr``, ``refine_batch``, ``refine_validation``,
      ``refine_validate_every``, ``refine_norms``: block refinement's options
      (``PruneConfig.block_refine_*``; the step with the lowest error on the held-out share is kept).
    - ``autocast``: None or "bfloat16": block refinement's forwards and backwards under
      ``torch.autocast`` (faster where the CPU has bf16 arithmetic).
    - ``eval_batches``: held-out batches whose perplexity before and after goes in the report.

    The work happens on a copy of ``model`` holding ``teacher``'s weights in its pruned layers, so
    ``model`` and ``teacher`` are untouched on error. One process.
    """
    from .calibrate.pipeline import find_prunable_layers
    from .criteria import Solver
    from .prune import _select_layers as select_layers
    from .prune import prune
    from .prune_config import PruneConfig
    from .solvers.admm import admm
    from .solvers.block_refine import check_block_refine_options

    for what, value in (("model", model), ("teacher", teacher)):
        if not isinstance(value, nn.Module):
            raise ValueError(f"reconstruct: {what}: expected a torch.nn.Module, but got {type(value).__name__}")
    if teacher is model:
        raise ValueError("reconstruct: teacher: expected another model (the dense one), but got the pruned model")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise ValueError(f"reconstruct: refine_steps: expected an integer >= 0, but got {refine_steps!r}")
    if refine_steps:
        check_block_refine_options(refine_steps, refine_lr, refine_validation, refine_batch, refine_validate_every,
                                   None, "reconstruct: refine_")
    if isinstance(pcg_iterations, bool) or not isinstance(pcg_iterations, int) or pcg_iterations < 1:
        raise ValueError(f"reconstruct: pcg_iterations: expected an integer >= 1, but got {pcg_iterations!r}")
    if (isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0
            or percdamp == float("inf")):
        raise ValueError(f"reconstruct: percdamp: expected a finite value > 0, but got {percdamp!r}")
    autocast = autocast_dtype(autocast, "reconstruct: autocast", allowed=("bfloat16",))
    _check_same_parameters(model, teacher)

    started = time.perf_counter()
    # The layers prune would solve (Linear, Conv2d, transformers' Conv1D as (out, in) matrices;
    # not an LM head tied to the embeddings), and those of them holding zeros.
    found = select_layers(model, (), None, 0.5)
    masks = {name: layer.matrix() != 0 for name, layer in found.items()}
    masks = {name: keep for name, keep in masks.items() if not bool(keep.all())}
    if not masks:
        raise ValueError("reconstruct: model: expected pruned layers (linear or convolution weights with exact "
                         "zeros), but found none; prune the model first")
    report = ReconstructionReport(layers=len(masks), masked_weights=int(sum(int((~m).sum()) for m in masks.values())),
                                  calibration_items=0, refine_steps=refine_steps, parameters=count_parameters(model),
                                  autocast=None if autocast is None else dtype_name(autocast))
    if eval_batches is not None:
        report.perplexity_before = perplexity(model, eval_batches)

    # The model with its pruned layers' dense weights (in the model's dtypes and devices): what
    # prune solves and block refinement targets.
    work = copy.deepcopy(model)
    theirs = dict(teacher.named_parameters())
    with torch.no_grad():
        for name, param in work.named_parameters():
            if name.endswith(".weight") and name[: -len(".weight")] in masks:
                param.copy_(theirs[name].to(device=param.device, dtype=param.dtype))
    ours = dict(model.named_parameters())

    def refit(weight: torch.Tensor, stats, *, sparsity, pattern, name) -> torch.Tensor:
        keep = masks[name].to(weight.device)
        current = found[name].matrix().to(device=weight.device, dtype=torch.float32)
        live = torch.diagonal(stats.hessian) > 0
        if not bool(live.any()):  # no calibration token reached the layer: nothing to fit it to
            return current
        updated, _ = admm(weight, stats.hessian, keep=keep, iterations=0, prune_iterations=0,
                          pcg_iterations=pcg_iterations, percdamp=float(percdamp), per_row=True, name=name)
        # Inputs that stayed zero on the calibration data say nothing about their weights: keep them.
        updated = torch.where(live.unsqueeze(0), updated, current)
        return torch.where(keep, updated, torch.zeros((), dtype=updated.dtype, device=updated.device))

    solver = Solver("reconstruct", refit, frozenset({"hessian"}))
    refine = {} if refine_steps == 0 else dict(
        refine="block", block_refine_steps=refine_steps, block_refine_lr=refine_lr, block_refine_batch=refine_batch,
        block_refine_validation=refine_validation, block_refine_validate_every=refine_validate_every,
        block_refine_norms=refine_norms,
        block_refine_autocast=None if autocast is None else dtype_name(autocast))
    zeros = report.masked_weights / sum(masks[name].numel() for name in masks)
    config = PruneConfig(method=solver, sparsity=min(zeros, 0.999), progress=progress, report_errors=None,
                         ignore=[name for name in find_prunable_layers(model) if name not in masks], distributed=False,
                         **refine)
    pruned = prune(work, config, calib)
    report.calibration_items = pruned.calibration_items
    report.timings = dict(pruned.timings)

    refitted = find_prunable_layers(work)
    broken = [name for name, keep in masks.items() if bool((refitted[name].matrix()[~keep.to(
        refitted[name].weight.device)] != 0).any())]
    if broken:  # checked on the copy, so that the model stays as it was
        raise ValueError(f"reconstruct: model: {broken[0]} could not be refitted with its zeros kept; pass a model "
                         "whose pruned layers prunekit.prune can solve")
    with torch.no_grad():
        for name, param in work.named_parameters():
            ours[name].copy_(param)
    del work, refitted
    report.pruned_weights_still_zero = True  # the copy's zeros, checked above, are the model's now
    if eval_batches is not None:
        report.perplexity_after = perplexity(model, eval_batches)
    report.seconds = time.perf_counter() - started
    return report
