"""Block-level refinement (``PruneConfig(refine="block")``): after a block's layers are pruned, a
few optimiser steps on the weights they kept, masks fixed, so that the pruned block reproduces
the dense block's outputs on the calibration inputs (the block-local reconstruction of Wanda++).

Layer-wise solvers (Wanda, SparseGPT, ADMM) each minimise their own layer's output error on the
dense inputs of that layer; the block as a whole (attention softmax, gating, residuals) is not
what they fit. Here the block runs forward and backward over the calibration inputs, one item (or
one ``batch`` of its sequences) per step, with Adam on its pruned layers' weights; gradients at
pruned positions are zeroed and the mask is re-applied after every step, so pruned weights stay
exactly zero and the sparsity and N:M patterns are unchanged; free parameters (low-rank
compensation factors, normalisation weights when asked) train beside them unmasked. Only the
block is resident (its weights, Adam's two moments, one step's activations). Smaller steps buy
more updates for the same compute, which is what a few-step refinement is short of; so does
``autocast`` (the steps' forward and backward in bfloat16 where the CPU has bf16 arithmetic,
about half the time; the weights, Adam's moments and the held-out measure stay in their dtype).

Overfitting: the calibration text is usually narrow (e.g. docstrings) and the model is used on
other text. A share of the calibration items (``validation``) is held out: the loss on them is
measured before the first step and after every ``validate_every`` steps (and the last), and the
weights of the measured step with the lowest held-out loss are kept (the pruned weights
themselves when no step improves on them, with an info log).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .._autocast import AUTOCAST_DTYPES, autocast_dtype, autocast_or_nothing
from ..calibrate.pipeline import BlockInput, block_output

logger = logging.getLogger(__name__)

__all__ = ["AUTOCAST_DTYPES", "BlockRefineResult", "check_block_refine_options", "refine_block"]


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


MAX_STEPS = 10000
"""The most block-refinement steps per block that the options accept."""


def check_block_refine_options(steps, lr, validation, batch=None, validate_every=1, autocast=None,
                               prefix: str = "block_refine_") -> torch.dtype | None:
    """ValueError naming the option for a step count, learning rate, validation share, batch,
    validation interval or autocast dtype out of range; returns the autocast dtype (None: off)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"{prefix}steps: expected an int in [1, {MAX_STEPS}], but got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= 1:
        raise ValueError(f"{prefix}lr: expected a learning rate in (0, 1], but got {lr!r}")
    if (isinstance(validation, bool) or not isinstance(validation, (int, float))
            or not 0 <= validation < 1):
        raise ValueError(f"{prefix}validation: expected a share of the calibration items in [0, 1), but got "
                         f"{validation!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"{prefix}batch: expected None (whole calibration items) or a number of sequences >= 1, "
                         f"but got {batch!r}")
    if isinstance(validate_every, bool) or not isinstance(validate_every, int) or validate_every < 1:
        raise ValueError(f"{prefix}validate_every: expected an int >= 1, but got {validate_every!r}")
    return autocast_dtype(autocast, f"{prefix}autocast")


def _cut_rows(value, rows: int, part: slice):
    """``value`` with the batch rows ``part`` taken: tensors of two or more dimensions whose first
    has the batch's ``rows`` (others, such as broadcast position embeddings, are shared), also
    inside tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return value[part] if value.dim() >= 2 and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        cut = [_cut_rows(entry, rows, part) for entry in value]
        return type(value)(*cut) if hasattr(value, "_fields") else type(value)(cut)
    if isinstance(value, dict):
        return {key: _cut_rows(entry, rows, part) for key, entry in value.items()}
    return value


def _micro_batches(item: BlockInput, target: torch.Tensor, batch: int | None) -> list[tuple[BlockInput, torch.Tensor]]:
    """The (input, dense output) pairs of ``batch`` sequences each that ``item`` splits into (views)."""
    rows = item.hidden.shape[0] if item.hidden.dim() >= 2 else 1
    if batch is None or rows <= batch or target.dim() < 2 or target.shape[0] != rows:
        return [(item, target)]
    pairs = []
    for start in range(0, rows, batch):
        part = slice(start, min(start + batch, rows))
        token_mask = item.token_mask[part] if item.token_mask is not None else None
        pairs.append((BlockInput(item.hidden[part], _cut_rows(item.args, rows, part),
                                 _cut_rows(item.kwargs, rows, part), token_mask), target[part]))
    return pairs


def _adam(parameters: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused where torch has the fused kernel (one pass per tensor instead of a dozen)."""
    fused = all(p.device.type in ("cpu", "cuda") for p in parameters) or None
    return torch.optim.Adam(parameters, lr=lr, fused=fused)


def _rows(tensor: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    if token_mask is not None and tensor.dim() == 3 and tuple(tensor.shape[:2]) == tuple(token_mask.shape):
        return tensor[token_mask]
    return tensor


def refine_block(block: nn.Module, weights: Mapping[str, nn.Parameter], inputs: Sequence,
                 targets: Sequence[torch.Tensor], *, steps: int, lr: float, validation: float = 0.125,
                 batch: int | None = None, validate_every: int = 1, autocast=None, name: str = "block",
                 run: Callable | None = None, free: Mapping[str, nn.Parameter] | None = None) -> BlockRefineResult:
    """Refines the pruned ``weights`` (name -> parameter of ``block``; zeros are the mask) in place
    so that ``block`` maps ``inputs`` closer to ``targets`` (the dense block's outputs).

    ``inputs``: items with ``hidden``, ``args``, ``kwargs`` and ``token_mask`` (the calibration
    walk's :class:`~prunekit.calibrate.pipeline.BlockInput`); ``targets[i]`` is the dense output
    for ``inputs[i]``. ``validation``: the share of items held out to choose the kept step (at
    least one item when there are two or more; none with a single item), measured every
    ``validate_every`` steps and after the last. ``batch``: sequences per step (the training items
    are split along their first dimension; None: one whole item per step). ``autocast``: None, or
    the dtype (torch.bfloat16, torch.float16 or their names) the training steps' forward and
    backward run in under ``torch.autocast``. ``run(block, item)`` overrides how the block is
    called. ``free``: parameters that train without a mask (the low-rank factors of compensated
    layers, normalisation weights). Every other parameter of the block stays frozen."""
    autocast = check_block_refine_options(steps, lr, validation, batch, validate_every, autocast)
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
    train = [pair for i in range(len(inputs) - held_out) for pair in _micro_batches(inputs[i], targets[i], batch)]
    held = [(inputs[i], targets[i]) for i in range(len(inputs) - held_out, len(inputs))]

    masks = {key: (weight.detach() != 0).to(weight.dtype) for key, weight in weights.items()}
    free = dict(free or {})
    if set(free) & set(weights):
        raise ValueError(f"refine='block': {name}: parameters {sorted(set(free) & set(weights))} are both masked "
                         "weights and free parameters")
    every = {**weights, **free}
    trainable = {id(parameter) for parameter in every.values()}
    previous = {parameter: parameter.requires_grad for parameter in block.parameters()}

    def with_scales(pairs):  # a set of pairs' loss is normalised by their targets' squared norm
        return [(item, target, float(_rows(target, item.token_mask).float().pow(2).sum())) for item, target in pairs]

    train, held = with_scales(train), with_scales(held)

    def loss_of(pairs: list[tuple[BlockInput, torch.Tensor, float]], grad: bool) -> float:
        total, scale = 0.0, sum(pair[2] for pair in pairs) or 1.0
        for item, target, _ in pairs:
            with torch.set_grad_enabled(grad), autocast_or_nothing(item.hidden.device.type, autocast if grad else None):
                output = _rows(run(block, item), item.token_mask)
            with torch.set_grad_enabled(grad):
                loss = (output.float() - _rows(target, item.token_mask).float()).pow(2).sum() / scale
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
        first = train[:1]  # the training error is followed on the first step's data (a forward per measure)
        train_before = None
        validation_before = loss_of(held, grad=False) if held else None
        best = validation_before if validation_before is not None else loss_of(train, grad=False)
        kept_step = 0
        optimizer = _adam(list(every.values()), lr)
        for step in range(1, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of([train[(step - 1) % len(train)]], grad=True)
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
            current = None
            if held and (step % validate_every == 0 or step == steps):
                current = loss_of(held, grad=False)
            elif not held and step == steps:
                current = loss_of(train, grad=False)
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
                               best if held else None)
    if kept_step == 0:
        logger.info("refine='block': %s: no step lowered the held-out output error (%.4g); kept the pruned weights",
                    name, best)
    else:
        logger.info("refine='block': %s: output error %.4g -> %.4g (train), %s (held out), kept step %d of %d",
                    name, train_before, train_kept, "-" if validation_before is None else
                    f"{validation_before:.4g} -> {best:.4g}", kept_step, steps)
    return result
