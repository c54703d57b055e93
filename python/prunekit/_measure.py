"""What the structured-compression and recovery reports measure before and after a step: the
parameter count, the dense-kernel forward time of one batch and a causal LM's perplexity.

The application has its own evaluation (``prunekit.app.evaluation``); the library cannot import
it, so the few lines a report needs live here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
import torch.nn as nn

__all__ = ["count_parameters", "forward_seconds", "perplexity", "causal_lm_nll", "call_model"]


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, each shared tensor (tied embeddings) counted once."""
    return sum(p.numel() for p in model.parameters())  # parameters() already deduplicates shared ones


def call_model(model: nn.Module, batch):
    """``model`` called on a batch: a dict of keyword arguments, a tuple of positional ones or a tensor."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


# Batch entries that are targets, not model inputs: labels, and the teacher's top-k next-token
# log-probabilities and ids that prunekit.recovery.teacher_samples keeps for distillation.
TEACHER_TARGET_KEYS = ("teacher_logprobs", "teacher_token_ids")
TARGET_KEYS = ("labels",) + TEACHER_TARGET_KEYS


def model_inputs(batch: Mapping) -> dict:
    """The entries of a batch dict that the model takes (``TARGET_KEYS`` left out)."""
    return {key: value for key, value in batch.items() if key not in TARGET_KEYS}


def _no_cache_kwargs(model: nn.Module, batch) -> dict:
    config = getattr(model, "config", None)
    if isinstance(batch, Mapping) and config is not None and getattr(config, "use_cache", None) is not None:
        return {"use_cache": False}
    return {}


@torch.no_grad()
def forward_seconds(model: nn.Module, batch, repeats: int = 3) -> float:
    """Median wall time of ``repeats`` forwards of ``batch`` (after one warm-up), in seconds."""
    was_training = model.training
    model.eval()
    extra = _no_cache_kwargs(model, batch)
    run = (lambda: model(**model_inputs(batch), **extra)) if isinstance(batch, Mapping) else \
        (lambda: call_model(model, batch))
    try:
        run()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    finally:
        model.train(was_training)
    return sorted(times)[len(times) // 2]


def causal_lm_nll(model: nn.Module, batch: Mapping) -> tuple[torch.Tensor, int]:
    """(sum of the next-token negative log-likelihoods, number of target tokens) of a causal LM on a
    batch holding ``input_ids`` (and optionally ``attention_mask``, and ``labels`` with -100 for
    tokens not to predict). Differentiable."""
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    outputs = model(**model_inputs(batch), **_no_cache_kwargs(model, batch))
    logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
    labels = batch.get("labels")
    targets = (labels if labels is not None else input_ids)[:, 1:]
    keep = targets != -100
    if mask is not None:
        keep = keep & mask[:, 1:].bool()
    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.clamp_min(0).reshape(-1),
                                            reduction="none").view_as(targets)
    return (nll * keep).sum(), int(keep.sum())


@torch.no_grad()
def perplexity(model: nn.Module, batches) -> float:
    """exp(mean next-token negative log-likelihood) of a causal LM over the batches' target tokens."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for batch in batches:
            nll, count = causal_lm_nll(model, batch)
            total += float(nll)
            tokens += count
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("perplexity: the batches hold no target tokens (every sequence is shorter than 2)")
    return math.exp(total / tokens)
