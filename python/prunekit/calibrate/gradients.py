"""Weight gradients of a loss over calibration items (criteria that need gradients, such as GBLM;
Taylor importance)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from ..distributed import SingleProcessStrategy
from .pipeline import CalibrationBatch, CalibrationError, PrunableLayer, model_device


def language_model_loss(model: nn.Module, batch: CalibrationBatch, *, no_loss_message: str) -> torch.Tensor:
    """The model's own loss with labels = input_ids (causal LMs); an integer first positional
    argument counts as input_ids. Raises CalibrationError(no_loss_message) when the model returns none."""
    kwargs = dict(batch.kwargs)
    args = batch.args
    if args and "input_ids" not in kwargs and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
        kwargs["input_ids"], args = args[0], args[1:]
    if "labels" not in kwargs and "input_ids" in kwargs:
        kwargs["labels"] = kwargs["input_ids"]
    output = model(*args, **kwargs)
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None:
        raise CalibrationError(no_loss_message)
    return loss


def accumulate_weight_gradients(model: nn.Module, weights: Mapping[str, torch.Tensor],
                                items: Iterable[tuple[int, object]], loss_fn: Callable,
                                accumulate: Callable[[str, torch.Tensor], None], *, loss_name: str) -> None:
    """For each (index, item), backpropagates ``loss_fn(model, batch)`` and calls
    ``accumulate(name, grad)`` with the fp32 gradient of every weight in ``weights`` that got one.

    Only these weights require gradients meanwhile and the model runs in eval mode; flags,
    existing gradients and the mode are restored. An item the forward rejects (any exception but
    a CalibrationError, which passes through) and a loss that is not a finite scalar raise
    ValueError naming the item (``loss_name`` names the loss).
    """
    device = model_device(model)
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    saved_grads = {name: w.grad for name, w in weights.items()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for index, item in items:
            batch = CalibrationBatch.from_item(item, index).to(device)
            for w in weights.values():
                w.grad = None
            try:
                loss = loss_fn(model, batch)
            except CalibrationError:
                raise
            except Exception as error:
                raise ValueError(f"calib: item {index} does not fit {type(model).__name__}.forward: "
                                 f"{type(error).__name__}: {error}") from error
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"{loss_name}: expected a scalar tensor, but got {loss!r}")
            if not bool(torch.isfinite(loss)):
                raise ValueError(f"{loss_name}: expected a finite loss, but calibration item {index} gives "
                                 f"{float(loss)} (NaN activations?)")
            loss.backward()
            for name, w in weights.items():
                if w.grad is not None:
                    accumulate(name, w.grad.detach().to(torch.float32))
    finally:
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
        for name, w in weights.items():
            w.grad = saved_grads[name]
        model.train(was_training)


def gradient_norms(model: nn.Module, layers: Mapping[str, PrunableLayer], items: list, loss_fn: Callable, *,
                   strategy: SingleProcessStrategy | None = None,
                   loss_name: str = "loss_fn") -> dict[str, torch.Tensor]:
    """||G|| over the calibration ``items`` of every layer's weight gradient of ``loss_fn(model,
    batch)``, as (out, in) fp32 matrices. With a distributed ``strategy`` each rank takes its share
    of the items and the squared gradients are summed over the ranks."""
    strategy = strategy if strategy is not None else SingleProcessStrategy()
    squares = {name: torch.zeros(layer.matrix().shape, dtype=torch.float32, device=layer.weight.device)
               for name, layer in layers.items()}

    def accumulate(name: str, grad: torch.Tensor) -> None:
        layer = layers[name]
        squares[name] += (grad.t() if layer.kind == "conv1d" else grad.reshape(grad.shape[0], -1)).square()

    with strategy.guard("the gradient pass"):
        accumulate_weight_gradients(model, {name: layer.weight for name, layer in layers.items()},
                                    strategy.shard(enumerate(items)), loss_fn, accumulate, loss_name=loss_name)
    strategy.reduce_sums_(squares, what="the gradient reduction")
    return {name: s.sqrt() for name, s in squares.items()}
