"""The structured pruner: :func:`prune_structured` removes whole channels, MLP intermediate
features and attention heads, so that the pruned modules are smaller dense modules.

It runs in three steps, every check before any change: :func:`validate` (the calibration data,
the model's structure, targets and sparsities, the groups to prune), :func:`plan` (how many units
each group keeps) and :func:`apply` (score each group's units with the importance, keep the best,
cut the modules, compensate biases, update a Hugging Face config).
"""

from __future__ import annotations

import fnmatch
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...calibrate.pipeline import CalibrationBatch, LayerInputStats, PrunableLayer, walk_blocks
from ...solvers.structured import bias_compensation, kept_units
from .attention import attention_layout, heads_after, update_attention_attributes
from .channel_groups import ChannelGroup, ChannelMember
from .channels import add_to_bias, prune_input_channels, prune_output_channels, prune_through_channels
from .config import StructuredConfig, config_from_call
from .hf_config import update_hf_config
from .report import StructuredReport, count_parameters
from .scoring import choose_units, expand_columns, gradients, member_matrix
from .structure import ModelStructure, find_structure, hf_config

__all__ = ["prune_structured", "validate", "plan", "apply"]


def prune_structured(model: nn.Module, config: StructuredConfig | None = None, calib: Sequence | None = None,
                     **deprecated) -> StructuredReport:
    """Structured pruning that physically shrinks ``model`` in place, as ``config`` (a
    :class:`StructuredConfig`; None: its defaults) says; returns a :class:`StructuredReport`.

    ``calib``: calibration inputs (tensors, dicts of keyword arguments, tuples) for the importances
    that need data and for bias compensation, as in :func:`prunekit.prune`. Transformers are
    calibrated block by block (:func:`prunekit.calibrate.pipeline.walk_blocks`), each block seeing
    the pruned outputs of the previous ones; other models with one-shot whole-model forwards.

    Hugging Face config: MLP widths (intermediate_size / ffn_dim / n_inner) and head counts
    (num_attention_heads, num_key_value_heads, head_dim kept explicitly) are updated. Every layer
    is pruned by the same count, because these configs hold one width for all layers; within a
    layer the channels removed are chosen by importance. The report says whether the updated
    config rebuilds the pruned model exactly (``config_reloadable``, checked by building the model
    class from the serialised config on the meta device): it does for MLP and head pruning of
    Mistral and Qwen2, for Llama when hidden_size stays a multiple of the head count
    (transformers' LlamaConfig validates that, although head_dim is explicit), and for MLP
    pruning of OPT, GPT-2 and BERT. Their attention classes derive head_dim from
    hidden_size / num_heads, so pruned heads cannot be expressed there. Where the config cannot
    describe the result (also: FLAP biases on modules the config gives no bias; widths differing
    between blocks through ``modules``/``ignore``) the model is still pruned and runs, and a
    warning says so: save such a model with torch.save. Biases created by FLAP are made
    expressible where a config switch exists (Llama's mlp_bias / attention_bias: turned on, the
    sibling projections get zero biases).

    Errors (ValueError naming the argument, the expected and the received value) are raised
    before anything is changed: targets the model does not have, sparsities removing every unit
    of a group, round_to larger than a group, missing calib, modules that are not prunable.

    Deprecated: ``prune_structured(model, ratio, importance=..., calib=..., ...)`` (the keywords of
    the previous release; ``ratio`` is ``sparsity``, ``importance`` is ``method``, defaults
    "magnitude", 0.25 and no progress bar) still works and raises a DeprecationWarning.
    """
    config = config_from_call(config, deprecated)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, but got {type(model).__name__}")
    started = time.perf_counter()
    modes = {module: module.training for module in model.modules()}
    model.eval()  # tracing and calibration must not update BatchNorm statistics or drop out
    try:
        checked = validate(model, config, calib)
        report = apply(model, config, checked, plan(checked, config))
    finally:
        for module, training in modes.items():
            module.training = training
    report.seconds = time.perf_counter() - started
    for message in report.warnings:
        warnings.warn(message, stacklevel=2)  # at the caller of prune_structured
    return report


# ----------------------------------------------------------------------------- validate

@dataclass
class Checked:
    """What :func:`validate` established about a call: the calibration items, the model's
    structure, its targets with their sparsities, and the groups to prune."""

    calib: list | None
    structure: ModelStructure
    targets: tuple[str, ...]
    sparsities: dict[str, float]
    groups: list[ChannelGroup]


def _calibration_items(calib, config: StructuredConfig) -> list | None:
    if calib is not None:
        calib = list(calib)
        for index, item in enumerate(calib):
            CalibrationBatch.from_item(item, index)  # rejects items that are no model input
    if config.needs_calibration and not calib:
        what = f"method={config.method_name!r}" if config.needs else "bias_compensation=True"
        raise ValueError(f"calib: expected a non-empty list of calibration inputs for {what}, but got "
                         f"{'an empty list' if calib is not None else 'None'}")
    return calib


def _matches(name: str, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + "."):
            return pattern
    return None


def _select_groups(structure: ModelStructure, targets: tuple[str, ...], modules, ignore) -> list[ChannelGroup]:
    groups = [g for g in structure.groups if g.kind in targets]
    if ignore:
        groups = [g for g in groups if not any(_matches(m.name, ignore) for m in g.members)
                  and not (g.attention and _matches(g.attention["module"], ignore))]
    if modules is None:
        return groups
    chosen = []
    for pattern in modules:
        hits = [g for g in groups if any(_matches(m.name, [pattern]) for m in g.members if m.role != "in"
                                         or g.kind == "heads")
                or (g.attention and _matches(g.attention["module"], [pattern]))]
        if not hits:
            reason = next((r for n, r in structure.blocked.items() if _matches(n, [pattern])), None)
            why = (f"its output channels cannot be pruned: {reason}" if reason is not None
                   else "it is not a member of any prunable group for these targets")
            raise ValueError(f"StructuredConfig.modules: expected names of modules in prunable channel groups or "
                             f"attention modules (targets {targets}), but {pattern!r} is not prunable: {why}")
        chosen.extend(g for g in hits if g not in chosen)
    return chosen


def validate(model: nn.Module, config: StructuredConfig, calib) -> Checked:
    """Every check of a call that needs the model (the config checked itself); changes nothing."""
    name = type(model).__name__
    calib = _calibration_items(calib, config)
    example_inputs = config.example_inputs
    if example_inputs is None and calib:
        example_inputs = calib[0]
    model_config = hf_config(model)
    is_transformer = model_config is not None and attention_layout(model_config) is not None
    if not is_transformer and example_inputs is None:
        raise ValueError(f"StructuredConfig.example_inputs: expected a model input (tensor, tuple or dict) to trace "
                         f"{name}, or calib; got None")
    structure = find_structure(model, example_inputs, blocks=config.blocks, head_unit=config.head_unit)
    available = ("mlp", "heads") if structure.transformer else ("channels",)
    targets = available if config.targets is None else config.targets
    for target in targets:
        if target not in available:
            raise ValueError(f"StructuredConfig.targets: expected some of {available} for {name}, but got {target!r}")
    sparsities = config.sparsity_per_target(targets, name)
    layout = structure.layout
    if config.head_unit == "query_head" and "heads" in targets and layout["heads"] == layout["kv_heads"]:
        raise ValueError(f"StructuredConfig.head_unit: expected 'kv_group' for {name}, whose attention has as many "
                         f"key/value heads as query heads ({layout['heads']}; 'query_head' needs grouped-query "
                         "attention), but got 'query_head'")
    if "heads" in targets and structure.heads_missing and sparsities["heads"] > 0:
        raise ValueError(f"StructuredConfig.targets: 'heads' needs attention modules with q/k/v/o projections "
                         f"matching the config (layout {layout}), but none was found in {structure.heads_missing[0]}")
    groups = _select_groups(structure, targets, config.modules, config.ignore)
    if not groups and config.modules is None:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(structure.blocked.items())[:3])
        raise ValueError(f"model: expected {name} to have prunable channel groups for targets {targets}, but found "
                         "none" + (f" ({reasons})" if reasons else ""))
    return Checked(calib, structure, targets, sparsities, groups)


# ----------------------------------------------------------------------------- plan

def plan(checked: Checked, config: StructuredConfig) -> list[tuple[ChannelGroup, int]]:
    """How many units each group keeps; raises where a group would lose them all."""
    result: list[tuple[ChannelGroup, int]] = []
    for group in checked.groups:
        sparsity = checked.sparsities[group.kind]
        rounding = config.round_to if group.kind != "heads" else None
        if rounding is not None and sparsity > 0 and rounding > group.units:
            raise ValueError(f"StructuredConfig.round_to: expected at most the {group.units} channels of group "
                             f"{group.name}, but got {rounding}")
        if group.kind == "heads" and group.attention["unit"] == "query_head":
            group_size = group.attention["heads"] // group.attention["kv_heads"]
            per_kv = kept_units(group_size, sparsity)
            if per_kv < 1:
                raise ValueError(f"StructuredConfig.sparsity: expected a sparsity that keeps at least one of the "
                                 f"{group_size} query heads of every key/value head of {group.name} "
                                 f"(head_unit='query_head'), but got {sparsity} which removes all of them")
            result.append((group, per_kv * group.attention["kv_heads"]))
            continue
        keep = kept_units(group.units, sparsity, rounding)
        if keep < 1:
            what = "key/value heads" if group.kind == "heads" else "channels"
            limit = 1 - 1 / group.units if rounding is None else None
            raise ValueError(f"StructuredConfig.sparsity: expected a sparsity that keeps at least one of the "
                             f"{group.units} {what} of {group.name}"
                             + (f" (below about {limit:.3f})" if limit is not None else "")
                             + f", but got {sparsity} which removes all of them")
        result.append((group, keep))
    return result


# ----------------------------------------------------------------------------- apply

def _cut_group(group: ChannelGroup, keep_units: torch.Tensor, stats: Mapping[str, LayerInputStats],
               compensate: bool, report: StructuredReport) -> None:
    """Cuts ``group`` down to ``keep_units`` (and compensates consumers' biases)."""
    removed_units = torch.tensor(sorted(set(range(group.units)) - set(keep_units.tolist())), dtype=torch.long)
    if removed_units.numel() == 0:
        return
    # removed channels per (module, role), collected over members (fused q|k|v has three)
    removed: dict[tuple[int, str], tuple[ChannelMember, set]] = {}
    for member in group.members:
        key = (id(member.module), member.role)
        entry = removed.setdefault(key, (member, set()))
        entry[1].update(member.channels(removed_units).flatten().tolist())
    if compensate:
        for member, channels in removed.values():
            stat = stats.get(member.name)
            if member.role != "in" or stat is None:
                continue
            columns = expand_columns(member, sorted(channels))
            delta = bias_compensation(member_matrix(member).float(), columns, stat.input_mean)
            if add_to_bias(member.module, delta):
                report.biases_created.append(member.name)
            report.bias_compensated.append(member.name)
    for member, channels in removed.values():
        size = member.axis_size()
        keep = torch.tensor([c for c in range(size) if c not in channels], dtype=torch.long)
        if member.role == "out":
            prune_output_channels(member.module, keep)
        elif member.role == "in":
            prune_input_channels(member.module, keep)
        else:
            prune_through_channels(member.module, keep)


def apply(model: nn.Module, config: StructuredConfig, checked: Checked,
          planned: list[tuple[ChannelGroup, int]]) -> StructuredReport:
    """Scores, chooses and cuts every planned group (block by block for transformers when the
    importance needs statistics), then updates a Hugging Face config; returns the report."""
    structure = checked.structure
    report = StructuredReport(config.method_name, checked.sparsities, config.round_to, count_parameters(model), 0)
    grads = {}
    if "gradients" in config.needs:
        grads = gradients(model, [m for g, _ in planned for m in g.members], checked.calib, config.loss_fn,
                          config.method_name)

    def prune_groups(items, stats):
        # every group of ``items`` is scored on the weights as they are before any of them is cut
        # (a conv can be a consumer in one group and a producer in another), then all are cut
        chosen = [choose_units(group, keep, config.importance, stats, grads) for group, keep in items]
        for (group, keep), units in zip(items, chosen):
            _cut_group(group, units, stats, config.compensate_bias, report)
            if group.kind == "heads" and keep != group.units:
                attention = model.get_submodule(group.attention["module"])
                update_attention_attributes(attention, group.attention, *heads_after(group, keep))
            report.groups.append({"name": group.name, "kind": group.kind, "members": group.member_names(),
                                  "units_before": group.units, "units_after": keep,
                                  "channels_per_unit": group.channels_per_unit,
                                  "kept_units": units.tolist()})

    if "statistics" not in config.needs and not config.compensate_bias:
        prune_groups(planned, {})
    else:
        layers = {}
        for group, keep in planned:
            if keep == group.units:
                continue  # nothing to score or compensate: no statistics needed
            for member in group.members:
                if member.kind in ("linear", "conv1d", "conv2d"):
                    layers[member.name] = PrunableLayer(member.name, member.module)
        by_block: dict[int | None, list] = {}
        for group, keep in planned:
            by_block.setdefault(group.block, []).append((group, keep))
        sequential = structure.transformer
        collected: dict[str, LayerInputStats] = {}
        done = set()
        if layers:
            for step in walk_blocks(model, checked.calib, layers, sequential=sequential, device=config.device,
                                    blocks_path=structure.blocks_name if structure.transformer else None,
                                    progress=config.progress, description="prunekit structured"):
                collected.update(step.stats)
                if sequential and step.index >= 0:
                    prune_groups(by_block.get(step.index, []), step.stats)
                    done.add(step.index)
        rest = [item for block, items in by_block.items() if block not in done for item in items]
        prune_groups(rest, collected)

    if structure.transformer:
        update_hf_config(model, hf_config(model), planned, structure, report)
    report.params_after = count_parameters(model)
    return report
