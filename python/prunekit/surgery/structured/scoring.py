"""Scoring a channel group: each member's weight as the matrix an importance reads
(:class:`~prunekit.solvers.structured.MemberWeights`), the gradients gradient importances need, and
the choice of the units a group keeps."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from ...calibrate.gradients import accumulate_weight_gradients, language_model_loss
from ...calibrate.pipeline import CalibrationBatch, LayerInputStats
from ...solvers.structured import MemberWeights, select_units, unit_scores
from .channel_groups import ChannelGroup, ChannelMember

__all__ = ["member_matrix", "expand_columns", "gradients", "choose_units"]

# modules with a weight matrix an importance scores; BatchNorm is only sliced along
_SCORED_KINDS = ("linear", "conv1d", "conv2d", "depthwise")


def member_matrix(member: ChannelMember) -> torch.Tensor:
    """The member's weight as (out_features, in_features), convolutions unfolded (in * kh * kw)."""
    weight = member.module.weight.detach()
    if member.kind == "conv1d":
        return weight.t()
    return weight.reshape(weight.shape[0], -1)


def _kernel_area(member: ChannelMember) -> int:
    return int(math.prod(member.module.kernel_size)) if member.kind == "conv2d" else 1


def _member_lines(member: ChannelMember, units: torch.Tensor) -> torch.Tensor:
    """(len(units), k) rows ("out"/"through") or columns ("in") of ``member``'s matrix per unit."""
    channels = member.channels(units)
    if member.role != "in":
        return channels
    area = _kernel_area(member)
    if area == 1:
        return channels
    columns = channels[..., None] * area + torch.arange(area)
    return columns.reshape(channels.shape[0], -1)


def expand_columns(member: ChannelMember, channels: list[int]) -> torch.Tensor:
    """The columns of ``member``'s matrix that its input ``channels`` occupy (every kernel position)."""
    channels = torch.tensor(channels, dtype=torch.long)
    area = _kernel_area(member)
    if area == 1:
        return channels
    return (channels[:, None] * area + torch.arange(area)).flatten()


def gradients(model: nn.Module, members: list[ChannelMember], calib: list, loss_fn: Callable | None,
              method: str) -> dict[str, torch.Tensor]:
    """Sum over the calibration batches of every member's weight gradient (matrix layout)."""
    modules = {m.name: m for m in members if m.kind in _SCORED_KINDS}
    weights = {name: m.module.weight for name, m in modules.items()}
    totals = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}

    def accumulate(name: str, grad: torch.Tensor) -> None:
        totals[name] += grad

    def default_loss(model: nn.Module, batch: CalibrationBatch) -> torch.Tensor:
        return language_model_loss(model, batch, no_loss_message=(
            f"StructuredConfig.loss_fn: expected a callable(model, batch) -> scalar loss for the {method!r} "
            f"importance, because {type(model).__name__} returned no loss for labels=input_ids; got None"))

    accumulate_weight_gradients(model, weights, enumerate(calib), loss_fn or default_loss, accumulate,
                                loss_name="StructuredConfig.loss_fn")
    result = {}
    for name, m in modules.items():
        grad = totals[name]
        result[name] = grad.t() if m.kind == "conv1d" else grad.reshape(grad.shape[0], -1)
    return result


def _score_group(group: ChannelGroup, importance: Callable, stats: Mapping[str, LayerInputStats],
                 grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    units = torch.arange(group.units)
    views = []
    for member in group.members:
        if member.kind not in _SCORED_KINDS:
            continue
        role = "in" if member.role == "in" else "out"
        stat = stats.get(member.name) if member.kind != "depthwise" else None
        views.append(MemberWeights(
            role=role, matrix=member_matrix(member), index=_member_lines(member, units),
            gradient=grads.get(member.name),
            input_norms=stat.input_norms if stat is not None else None,
            input_var=stat.input_var if (stat is not None and role == "in") else None,
            name=f"{member.name}:{member.role}"))
    return unit_scores(views, group.units, importance)


def _select_per_kv_head(group: ChannelGroup, scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The best query heads within every key/value head's group, the same number in each."""
    kv = group.attention["kv_heads"]
    size = group.units // kv
    per_kv = keep // kv
    return torch.cat([select_units(scores[j * size:(j + 1) * size], per_kv) + j * size for j in range(kv)])


def choose_units(group: ChannelGroup, keep: int, importance: Callable, stats: Mapping[str, LayerInputStats],
                 grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The ``keep`` units of ``group`` with the highest importance (sorted), without scoring when all stay."""
    if keep == group.units:
        return torch.arange(group.units)
    scores = _score_group(group, importance, stats, grads)
    if group.kind == "heads" and group.attention["unit"] == "query_head":
        return _select_per_kv_head(group, scores, keep)
    return select_units(scores, keep)
