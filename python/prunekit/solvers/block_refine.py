"""Block-level refinement (``PruneConfig(refine="block")``): after a block's layers are pruned, a
few optimiser steps on the weights they kept, masks fixed, so that the pruned block reproduces
the dense block's outputs on the calibration inputs (the block-local reconstruction of Wanda++).

Layer-wise solvers (Wanda, SparseGPT, ADMM) each minimise their own layer's output error on the
dense inputs of that layer; the block as a whole (attention softmax, gating, residuals) is not
what they fit. Here the block runs forward and backward over the calibration inputs, one item per
step, with Adam on its pruned layers' weights; gradients at pruned positions are zeroed and the
mask is re-applied after every step, so pruned weights stay exactly zero and the sparsity and N:M
patterns are unchanged; low-rank compensation factors, when present, train beside them unmasked.
Only the block is resident (its weights, Adam's two moments, one item's
activations).

Overfitting: the calibration text is usually narrow (e.g. docstrings) and the model is used on
other text. A share of the calibration items (``validation``) is held out: the loss on them is
measured before the first step and after every step, and the weights of the step with the lowest
held-out loss are kept (the pruned weights themselves when no step improves on them, with an
info log).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..calibrate.pipeline import block_output

logger = logging.getLogger(__name__)

__all__ = ["BlockRefineResult", "check_block_refine_options", "refine_block"]


@dataclass
class BlockRefineResult:
    """What :func:`refine_block` did: the relative output error (||f_s(x) - f(x)||^2 over
    ||f(x)||^2) on the first training item and on the held-out items before the first step and
    with the kept weights, and the step whose weights were kept (0: the pruned weights)."""

    block: str
    steps: int
    kept_step: int
    train_before: float
    train_after: float
    validation_before: float | None
    validation_after: float | None


def check_block_refine_options(steps, lr, validation, prefix: str = "block_refine_") -> None:
    """ValueError naming the option for a step count, learning rate or validation share out of range."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10000:
        raise ValueError(f"{prefix}steps: expected an int in [1, 10000], but got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= 1:
        raise ValueError(f"{prefix}lr: expected a learning rate in (0, 1], but got {lr!r}")
    if (isinstance(validation, bool) or not isinstance(validation, (int, float))
            or not 0 <= validation < 1):
        raise ValueError(f"{prefix}validation: expected a share of the calibration items in [0, 1), but got "
                         f"{validation!r}")


def _rows(tensor: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    if token_mask is not None and tensor.dim() == 3 and tuple(tensor.shape[:2]) == tuple(token_mask.shape):
        return tensor[token_mask]
    return tensor


def refine_block(block: nn.Module, weights: Mapping[str, nn.Parameter], inputs: Sequence,
                 targets: Sequence[torch.Tensor], *, steps: int, lr: float, validation: float = 0.125,
                 name: str = "block", run: Callable | None = None,
                 free: Mapping[str, nn.Parameter] | None = None) -> BlockRefineResult:
    """Refines the pruned ``weights`` (name -> parameter of ``block``; zeros are the mask) in place
    so that ``block`` maps ``inputs`` closer to ``targets`` (the dense block's outputs).

    ``inputs``: items with ``hidden``, ``args``, ``kwargs`` and ``token_mask`` (the calibration
    walk's :class:`~prunekit.calibrate.pipeline.BlockInput`); ``targets[i]`` is the dense output
    for ``inputs[i]``. ``validation``: the share of items held out to choose the kept step (at
    least one item when there are two or more; none with a single item). ``run(block, item)``
    overrides how the block is called. ``free``: parameters that train without a mask (the
    low-rank factors of compensated layers). Every other parameter of the block stays frozen."""
    check_block_refine_options(steps, lr, validation)
    if len(inputs) != len(targets) or not inputs:
        raise ValueError(f"refine='block': {name}: expected one dense output per calibration input, but got "
                         f"{len(inputs)} inputs and {len(targets)} outputs")
    if not weights:
        raise ValueError(f"refine='block': {name}: expected at least one pruned weight to refine, but got none")
    for key, weight in weights.items():
        if not weight.dtype.is_floating_point:
            raise ValueError(f"refine='block': {name}: weight {key} has dtype {weight.dtype}; expected floating point")
    run = run if run is not None else (
        lambda module, item: block_output(module(item.hidden, *item.args, **item.kwargs), "refine='block'"))
    held_out = 0 if len(inputs) < 2 or validation == 0 else max(1, round(len(inputs) * validation))
    train_items = list(range(len(inputs) - held_out))
    validation_items = list(range(len(inputs) - held_out, len(inputs)))

    masks = {key: weight.detach() != 0 for key, weight in weights.items()}
    free = dict(free or {})
    if set(free) & set(weights):
        raise ValueError(f"refine='block': {name}: parameters {sorted(set(free) & set(weights))} are both masked "
                         "weights and free parameters")
    every = {**weights, **free}
    trainable = {id(parameter) for parameter in every.values()}
    previous = {parameter: parameter.requires_grad for parameter in block.parameters()}
    scales = [float(_rows(target, inputs[i].token_mask).float().pow(2).sum()) for i, target in enumerate(targets)]

    def loss_of(indices: list[int], grad: bool) -> float:
        total, scale = 0.0, sum(scales[i] for i in indices) or 1.0
        for i in indices:
            with torch.set_grad_enabled(grad):
                output = _rows(run(block, inputs[i]), inputs[i].token_mask)
                target = _rows(targets[i], inputs[i].token_mask)
                loss = (output.float() - target.float()).pow(2).sum() / scale
            if grad:
                loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise ValueError(f"refine='block': {name}: the output error became {total} (NaN or Inf); lower "
                             f"PruneConfig.block_refine_lr (now {lr}) or check the calibration data")
        return total

    try:
        for parameter in block.parameters():
            parameter.requires_grad_(id(parameter) in trainable)
        best_state = {key: parameter.detach().clone() for key, parameter in every.items()}
        first = train_items[:1]  # the training error is followed on the first item (a forward per measure)
        train_before = None
        validation_before = loss_of(validation_items, grad=False) if validation_items else None
        best = validation_before if validation_before is not None else loss_of(train_items, grad=False)
        kept_step = 0
        optimizer = torch.optim.Adam(list(every.values()), lr=lr)
        for step in range(1, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            item = train_items[(step - 1) % len(train_items)]
            loss = loss_of([item], grad=True)
            if step == 1:
                train_before = loss  # before the first update, on the first item
            with torch.no_grad():
                for key, weight in weights.items():
                    if weight.grad is not None:
                        weight.grad.mul_(masks[key])
            optimizer.step()
            with torch.no_grad():
                for key, weight in weights.items():
                    weight.mul_(masks[key])
            current = loss_of(validation_items, grad=False) if validation_items else None
            if current is None and step == steps:
                current = loss_of(train_items, grad=False)
            if current is not None and current < best:
                best, kept_step = current, step
                best_state = {key: parameter.detach().clone() for key, parameter in every.items()}
        with torch.no_grad():
            for key, parameter in every.items():
                parameter.copy_(best_state[key])
        train_kept = loss_of(first, grad=False) if kept_step else train_before
    finally:
        for parameter, requires_grad in previous.items():
            parameter.requires_grad_(requires_grad)
            parameter.grad = None
    result = BlockRefineResult(name, steps, kept_step, train_before, train_kept, validation_before,
                               best if validation_items else None)
    if kept_step == 0:
        logger.info("refine='block': %s: no step lowered the held-out output error (%.4g); kept the pruned weights",
                    name, best)
    else:
        logger.info("refine='block': %s: output error %.4g -> %.4g (train), %s (held out), kept step %d of %d",
                    name, train_before, train_kept, "-" if validation_before is None else
                    f"{validation_before:.4g} -> {best:.4g}", kept_step, steps)
    return result
