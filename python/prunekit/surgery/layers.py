"""Layer pruning: remove whole blocks (ShortGPT) or attention / MLP sublayers (FinerCut) of a
transformer: ``prunekit.prune_layers(model, ratio, calib, unit="block" | "sublayer")``.

Scores. Every unit is scored by how much the block output changes when the unit is removed,
``1 - cos(y, y')`` averaged over the calibration tokens, where ``y`` is the block's output and
``y'`` its output without the unit. For a whole block ``y'`` is the block's input, so the score is
ShortGPT's block influence ``1 - cos(x, f(x))`` (Men et al. 2024); for a sublayer ``y'`` is the
block run with that attention or MLP left out (FinerCut, Zhang et al. 2024, scores sublayers by
the change of the output they cause; this is the block-local version, one forward per sublayer
and block instead of one per sublayer for the whole model). The blocks are walked one at a time
over the captured calibration inputs of the model being pruned. ``rounds`` > 1 removes the units
in that many steps, re-scoring the pruned model between them (FinerCut is fully iterative).

Removal.

- Blocks leave the block list; the attention modules are renumbered (``layer_idx``, the KV
  cache slot) and the Hugging Face config updated (``num_hidden_layers``, and ``layer_types``
  where the config has one), so ``save_pretrained`` writes a model that
  ``AutoModelForCausalLM.from_pretrained`` reloads and generates with.
- A sublayer is replaced by a parameter-free module returning zeros (:class:`RemovedAttention`,
  :class:`RemovedMLP`) and the norm in front of it by ``nn.Identity``: the residual add then
  passes the block input through, exactly as if the sublayer were not there. A block that
  loses both sublayers is removed as a whole. transformers' configs cannot describe a block
  without its attention or MLP, so a sublayer-pruned model records what it lacks in
  ``config.prunekit_removed_sublayers`` and is saved with ``prunekit.save``; ``prunekit.load``
  (and :func:`apply_recorded_removals` on a model built from that config) rebuilds it.
  ``from_pretrained`` on such a folder fails (it holds no transformers weights file), rather
  than loading random weights for the missing sublayers. The remaining attention modules are
  renumbered 0, 1, ... so that the KV cache's first slot (which transformers reads the cached
  length from) belongs to a live attention.

Supported sublayer layouts: Llama, Mistral, Qwen2, SmolLM2 (``self_attn`` after
``input_layernorm``, ``mlp`` after ``post_attention_layernorm``) and GPT-2 (``attn`` after
``ln_1``, ``mlp`` after ``ln_2``). Blocks: any model with a block list (those and OPT, BERT).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed as dist_
from .._measure import count_parameters, forward_seconds, perplexity
from ..calibrate.pipeline import (CalibrationBatch, _no_cache, block_output, capture_block_inputs, find_blocks,
                                  model_device)

logger = logging.getLogger(__name__)

__all__ = ["prune_layers", "LayerPruneReport", "score_layers", "remove_blocks", "remove_sublayers",
           "apply_recorded_removals", "RemovedAttention", "RemovedMLP", "UNITS", "SUBLAYERS"]

UNITS = ("block", "sublayer")
SUBLAYERS = ("attention", "mlp")
BUDGETS = ("units", "parameters")
CONFIG_FIELD = "prunekit_removed_sublayers"

# (attention, the norm in front of it, MLP, the norm in front of it), by block attribute name.
_SUBLAYER_LAYOUTS = (("self_attn", "input_layernorm", "mlp", "post_attention_layernorm"),  # Llama, Mistral, Qwen2
                     ("attn", "ln_1", "mlp", "ln_2"))  # GPT-2


class RemovedAttention(nn.Module):
    """Stands in for a removed attention sublayer: its output is zero, so the block's residual add
    passes the input through; returns (output, no attention weights) as attention modules do."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    """Stands in for a removed MLP sublayer: its output is zero (the residual add passes the input)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


_REMOVED = {"attention": RemovedAttention, "mlp": RemovedMLP}


def _layout(block: nn.Module, what: str = "unit") -> dict[str, tuple[str, str]]:
    for attention, attention_norm, mlp, mlp_norm in _SUBLAYER_LAYOUTS:
        if all(hasattr(block, a) for a in (attention, attention_norm, mlp, mlp_norm)):
            return {"attention": (attention, attention_norm), "mlp": (mlp, mlp_norm)}
    raise ValueError(f"prune_layers: {what}: 'sublayer' supports blocks with self_attn/input_layernorm/mlp/"
                     f"post_attention_layernorm (Llama, Mistral, Qwen2) or attn/ln_1/mlp/ln_2 (GPT-2), but got a "
                     f"{type(block).__name__}; use unit='block'")


def _is_removed(block: nn.Module, sublayer: str) -> bool:
    return isinstance(getattr(block, _layout(block)[sublayer][0]), _REMOVED[sublayer])


def _blocks(model: nn.Module, blocks: str | None) -> tuple[str, nn.ModuleList]:
    found = find_blocks(model, blocks)
    if found is None:
        raise ValueError(f"prune_layers: model: {type(model).__name__} has no block list (an nn.ModuleList of "
                         "identical blocks); pass blocks='name.of.the.list'")
    return found


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sublayer_parameters(block: nn.Module, sublayer: str) -> int:
    module_name, norm_name = _layout(block)[sublayer]
    return _parameters(getattr(block, module_name)) + _parameters(getattr(block, norm_name))


# ----------------------------------------------------------------------------- scores

class _Swapped:
    """Temporarily replaces a block's sublayer (and its norm) by the removed stand-ins."""

    def __init__(self, block: nn.Module, sublayer: str):
        self.block, (self.module_name, self.norm_name) = block, _layout(block)[sublayer]
        self.replacement = _REMOVED[sublayer]()

    def __enter__(self):
        self.saved = getattr(self.block, self.module_name), getattr(self.block, self.norm_name)
        setattr(self.block, self.module_name, self.replacement)
        setattr(self.block, self.norm_name, nn.Identity())

    def __exit__(self, *exc):
        setattr(self.block, self.module_name, self.saved[0])
        setattr(self.block, self.norm_name, self.saved[1])


def _distance_sum(a: torch.Tensor, b: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[float, int]:
    """Sum over tokens of 1 - cos(a, b) and the token count (padding tokens left out)."""
    distance = 1 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)
    if token_mask is not None and tuple(distance.shape) == tuple(token_mask.shape):
        distance = distance[token_mask]
    return float(distance.sum(dtype=torch.float64)), distance.numel()


@torch.no_grad()
def score_layers(model: nn.Module, calib: Sequence, *, sublayers: bool = False, blocks: str | None = None,
                 progress: bool = False, distributed: bool | None = None, process_group=None) -> list[dict]:
    """For every block, ``{"block": 1 - cos(x, f(x))}`` and with ``sublayers`` also
    ``"attention"`` / ``"mlp"``: 1 - cos of the block output with and without that sublayer
    (None where it is removed already), each averaged over the calibration tokens. Under a process
    group the batches are sharded and the sums reduced."""
    from tqdm.auto import tqdm

    blocks_name, block_list = _blocks(model, blocks)
    items = list(calib)
    if not items:
        raise ValueError("prune_layers: calib: expected at least one calibration batch, but got none")
    strategy = dist_.strategy_for(distributed, process_group)
    batches = [CalibrationBatch.from_item(item, i) for i, item in enumerate(items)]
    batches = strategy.shard(batches) if strategy.world > 1 else batches
    device = model_device(model)
    sums = torch.zeros(len(block_list), 3, 2, dtype=torch.float64)  # block, attention, mlp x (sum, tokens)
    was_training = model.training
    model.eval()
    try:
        with strategy.guard("scoring the layers"), _no_cache(model):
            inputs = capture_block_inputs(model, blocks_name, block_list, batches, device)
            bar = tqdm(block_list, desc="prunekit prune-layers: scores", leave=False,
                       disable=None if progress and strategy.is_main else True)
            for index, block in enumerate(bar):
                live = [s for s in SUBLAYERS if sublayers and not _is_removed(block, s)]
                for inp in inputs:
                    out = block_output(block(inp.hidden, *inp.args, **inp.kwargs))
                    sums[index, 0] += torch.tensor(_distance_sum(inp.hidden, out, inp.token_mask))
                    for column, sublayer in enumerate(SUBLAYERS, start=1):
                        if sublayer in live:
                            with _Swapped(block, sublayer):
                                without = block_output(block(inp.hidden, *inp.args, **inp.kwargs))
                            sums[index, column] += torch.tensor(_distance_sum(out, without, inp.token_mask))
                    inp.hidden = out
        if strategy.world > 1:
            strategy.reduce_sums_({"scores": sums}, "prune_layers")
    finally:
        model.train(was_training)
    scores = []
    for index, block in enumerate(block_list):
        row = {"block": float(sums[index, 0, 0] / sums[index, 0, 1].clamp_min(1))}
        if sublayers:
            for column, sublayer in enumerate(SUBLAYERS, start=1):
                removed = _is_removed(block, sublayer)
                row[sublayer] = None if removed else float(sums[index, column, 0] / sums[index, column, 1].clamp_min(1))
        scores.append(row)
    return scores


# ----------------------------------------------------------------------------- removal

def _set_config(config, name: str, value) -> None:
    setattr(config, name, value)


def _renumber_attention(block_list: nn.ModuleList) -> None:
    """Live attention modules get layer_idx 0, 1, ... in block order (their KV-cache slots); in
    blocks without a known sublayer layout every layer_idx becomes the block's position."""
    slot = 0
    for position, block in enumerate(block_list):
        if isinstance(getattr(block, "layer_idx", None), int):
            block.layer_idx = position
        try:
            attention = getattr(block, _layout(block)["attention"][0])
        except ValueError:
            for module in block.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = position
            continue
        if isinstance(attention, RemovedAttention):
            continue
        for module in attention.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = slot
        slot += 1


def _recorded(block_list: nn.ModuleList) -> dict[str, list[int]]:
    recorded = {s: [] for s in SUBLAYERS}
    for position, block in enumerate(block_list):
        try:
            _layout(block)
        except ValueError:
            return recorded
        for sublayer in SUBLAYERS:
            if _is_removed(block, sublayer):
                recorded[sublayer].append(position)
    return recorded


def _update_config(model: nn.Module, block_list: nn.ModuleList, kept: list[int] | None) -> dict:
    """num_hidden_layers, layer_types and the sublayer record; returns the changes made."""
    config = getattr(model, "config", None)
    changes = {}
    if config is None:
        return changes
    layers_before = getattr(config, "num_hidden_layers", None)
    if layers_before is not None and layers_before != len(block_list):
        _set_config(config, "num_hidden_layers", len(block_list))
        changes["num_hidden_layers"] = [layers_before, len(block_list)]
    layer_types = getattr(config, "layer_types", None)
    if kept is not None and isinstance(layer_types, list) and len(layer_types) == (layers_before or -1):
        config.layer_types = [layer_types[i] for i in kept]
        changes["layer_types"] = "entries of the removed blocks dropped"
    recorded = _recorded(block_list)
    if any(recorded.values()):
        setattr(config, CONFIG_FIELD, recorded)
        changes[CONFIG_FIELD] = recorded
    elif hasattr(config, CONFIG_FIELD):
        delattr(config, CONFIG_FIELD)
    return changes


def remove_blocks(model: nn.Module, indices: Sequence[int], *, blocks: str | None = None) -> dict:
    """Removes the blocks at ``indices`` (positions in the current block list), renumbers the
    attention modules and updates the config. Returns the config changes."""
    blocks_name, block_list = _blocks(model, blocks)
    count = len(block_list)
    indices = sorted(set(_check_indices(indices, count)))
    if len(indices) >= count:
        raise ValueError(f"prune_layers: indices: removing {len(indices)} of {count} blocks leaves none; expected "
                         "at least one block to remain")
    kept = [i for i in range(count) if i not in set(indices)]
    new_list = nn.ModuleList([block_list[i] for i in kept])
    _set_submodule(model, blocks_name, new_list)
    _renumber_attention(new_list)
    return _update_config(model, new_list, kept)


def _check_indices(indices, count: int) -> list[int]:
    bad = [i for i in indices if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count]
    if bad:
        raise ValueError(f"prune_layers: indices: expected block indices in [0, {count - 1}], but got "
                         f"{', '.join(map(repr, bad))}")
    return list(indices)


def remove_sublayers(model: nn.Module, removals: Sequence[tuple[int, str]], *, blocks: str | None = None) -> dict:
    """Removes sublayers given as (block position, "attention" | "mlp"); a block left with
    neither is removed whole. Renumbers the attention modules, updates the config (the
    removed sublayers recorded in ``config.prunekit_removed_sublayers``). Returns the changes."""
    blocks_name, block_list = _blocks(model, blocks)
    count = len(block_list)
    removals = [_parse_sublayer(r, count) for r in removals]
    config = getattr(model, "config", None)
    layer_types = getattr(config, "layer_types", None)
    if any(s == "attention" for _, s in removals) and isinstance(layer_types, list) and len(set(layer_types)) > 1:
        raise ValueError(f"prune_layers: unit: removing attention sublayers of a model with mixed attention layer "
                         f"types ({sorted(set(layer_types))}) would mismatch the KV-cache layers; use unit='block'")
    gone = set(removals) | {(i, s) for i, block in enumerate(block_list) for s in SUBLAYERS
                            if _is_removed(block, s)}
    empty = [i for i in range(count) if all((i, s) in gone for s in SUBLAYERS)]
    if len(empty) == count:
        raise ValueError(f"prune_layers: removing these sublayers leaves no attention or MLP in any of the {count} "
                         "blocks; expected at least one to remain")
    for position, sublayer in removals:
        block = block_list[position]
        module_name, norm_name = _layout(block, "model")[sublayer]
        setattr(block, module_name, _REMOVED[sublayer]())
        setattr(block, norm_name, nn.Identity())
    kept = [i for i in range(count) if i not in set(empty)]
    new_list = nn.ModuleList([block_list[i] for i in kept]) if empty else block_list
    if empty:
        _set_submodule(model, blocks_name, new_list)
    _renumber_attention(new_list)
    return _update_config(model, new_list, kept if empty else None)


def _parse_sublayer(item, count: int) -> tuple[int, str]:
    if isinstance(item, str):
        index, _, sublayer = item.partition(".")
        try:
            item = (int(index), sublayer)
        except ValueError:
            item = (index, sublayer)
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise ValueError(f"prune_layers: indices: expected sublayers as 'BLOCK.attention' / 'BLOCK.mlp' or "
                         f"(block, 'attention' | 'mlp'), but got {item!r}")
    index, sublayer = item
    if sublayer not in SUBLAYERS:
        raise ValueError(f"prune_layers: indices: expected the sublayer 'attention' or 'mlp', but got {sublayer!r} "
                         f"in {item!r}")
    _check_indices([index], count)
    return int(index), sublayer


def apply_recorded_removals(model: nn.Module, *, blocks: str | None = None) -> nn.Module:
    """Replaces the sublayers that ``model.config.prunekit_removed_sublayers`` names (a model
    built from the config of a sublayer-pruned model, before its weights are loaded); a model
    without the record is returned unchanged."""
    record = getattr(getattr(model, "config", None), CONFIG_FIELD, None)
    if not record:
        return model
    if not isinstance(record, dict) or set(record) - set(SUBLAYERS):
        raise ValueError(f"config.{CONFIG_FIELD}: expected {{'attention': [...], 'mlp': [...]}}, but got {record!r}")
    _, block_list = _blocks(model, blocks)
    for sublayer in SUBLAYERS:
        for position in _check_indices(record.get(sublayer, []), len(block_list)):
            block = block_list[position]
            module_name, norm_name = _layout(block, "model")[sublayer]
            setattr(block, module_name, _REMOVED[sublayer]())
            setattr(block, norm_name, nn.Identity())
    _renumber_attention(block_list)
    return model


# ----------------------------------------------------------------------------- prune_layers

@dataclass
class LayerPruneReport:
    """What :func:`prune_layers` did (JSON-serialisable through ``to_dict``)."""

    unit: str
    ratio: float | None
    budget: str
    rounds: int
    removed: list = field(default_factory=list)
    """Removed units, named by their index in the original block list ("7" or "7.attention")."""
    scores: list = field(default_factory=list)
    """Per round: the scores of every remaining block (see :func:`score_layers`), by original index."""
    blocks_before: int = 0
    blocks_after: int = 0
    parameters_before: int = 0
    parameters_after: int = 0
    block_parameters_before: int = 0
    block_parameters_after: int = 0
    forward_seconds_before: float | None = None
    forward_seconds_after: float | None = None
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    config_changes: dict = field(default_factory=dict)
    reload: str = "from_pretrained"
    """How a saved result reloads: "from_pretrained" (save_pretrained) or "prunekit.load" (prunekit.save)."""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        names = ", ".join(map(str, self.removed)) or "-"
        text = (f"prune_layers ({self.unit}): removed {len(self.removed)} ({names}); "
                f"blocks {self.blocks_before} -> {self.blocks_after}; parameters {self.parameters_before:,} -> "
                f"{self.parameters_after:,}")
        if self.forward_seconds_before and self.forward_seconds_after:
            text += f"; forward {self.forward_seconds_before / self.forward_seconds_after:.2f}x faster"
        if self.perplexity_before is not None:
            text += f"; perplexity {self.perplexity_before:.2f} -> {self.perplexity_after:.2f}"
        return text


def _choose(candidates: list[tuple[float, object, int]], target: float, budget: str) -> list:
    """The lowest-scoring candidates (score, unit, parameters) up to ``target`` units or parameters."""
    chosen, spent = [], 0.0
    for score, unit, params in sorted(candidates, key=lambda c: (c[0], str(c[1]))):
        if spent >= target - 1e-9:
            break
        chosen.append(unit)
        spent += 1 if budget == "units" else params
    return chosen


def prune_layers(model: nn.Module, ratio: float | None = None, calib: Sequence | None = None, unit: str = "block",
                 *, indices: Sequence | None = None, budget: str = "units", rounds: int = 1,
                 blocks: str | None = None, eval_batches=None, time_batch=None, progress: bool = True,
                 distributed: bool | None = None, process_group=None) -> LayerPruneReport:
    """Removes the least important blocks or sublayers of ``model`` in place.

    - ``ratio``: the fraction of units to remove, in [0, 1): of the blocks (``unit="block"``) or
      of the attention and MLP sublayers (``unit="sublayer"``, two per block); with
      ``budget="parameters"`` the fraction of the blocks' parameters instead (sublayers then
      removed by score until that many parameters are gone). Needs ``calib`` (batches as for
      :func:`prunekit.prune`) to score the units.
    - ``indices``: instead of ``ratio``, the units to remove: block positions, or for sublayers
      "BLOCK.attention" / "BLOCK.mlp" (or (block, sublayer) pairs).
    - ``rounds``: remove in that many steps, re-scoring in between (1: one-shot, as ShortGPT).
    - ``eval_batches``: held-out causal-LM batches whose perplexity goes in the report, before and
      after; ``time_batch``: the batch timed (default the first calibration batch).

    Returns a :class:`LayerPruneReport`. Bad input raises ValueError before the model changes.
    """
    started = time.perf_counter()
    if unit not in UNITS:
        raise ValueError(f"prune_layers: unit: expected one of {', '.join(UNITS)}, but got {unit!r}")
    if budget not in BUDGETS:
        raise ValueError(f"prune_layers: budget: expected one of {', '.join(BUDGETS)}, but got {budget!r}")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"prune_layers: rounds: expected an integer >= 1, but got {rounds!r}")
    if (ratio is None) == (indices is None):
        raise ValueError("prune_layers: expected exactly one of ratio and indices, but got "
                         f"{'both' if ratio is not None else 'neither'}")
    calib_items = list(calib) if calib is not None else []
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"prune_layers: ratio: expected a fraction in [0, 1), but got {ratio!r}")
        if not calib_items:
            raise ValueError("prune_layers: calib: scoring by ratio needs calibration batches, but got none")
    _, block_list = _blocks(model, blocks)
    count = len(block_list)
    if unit == "sublayer":
        for block in block_list:
            _layout(block, "unit")
    if indices is not None:  # validated before anything changes
        if unit == "block":
            _check_indices(list(indices), count)
            if len(set(indices)) >= count:
                raise ValueError(f"prune_layers: indices: removing {len(set(indices))} of {count} blocks leaves "
                                 "none; expected at least one block to remain")
        else:
            [_parse_sublayer(item, count) for item in indices]

    report = LayerPruneReport(unit=unit, ratio=None if ratio is None else float(ratio), budget=budget, rounds=rounds,
                              blocks_before=count, parameters_before=count_parameters(model),
                              block_parameters_before=_parameters(block_list),
                              reload="from_pretrained" if unit == "block" else "prunekit.load")
    timing = time_batch if time_batch is not None else (calib_items[0] if calib_items else None)
    if timing is not None:
        report.forward_seconds_before = forward_seconds(model, timing)
    if eval_batches is not None:
        report.perplexity_before = perplexity(model, eval_batches)

    origin = list(range(count))  # original index of each current block
    changes = {}
    if indices is not None:
        if unit == "block":
            report.removed = sorted(set(indices))
            changes = remove_blocks(model, list(indices), blocks=blocks)
        else:
            parsed = sorted(set(_parse_sublayer(item, count) for item in indices))
            report.removed = [f"{i}.{s}" for i, s in parsed]
            changes = remove_sublayers(model, parsed, blocks=blocks)
    else:
        total_units = count if unit == "block" else 2 * count
        target = ratio * (total_units if budget == "units" else report.block_parameters_before)
        if budget == "units":
            target = round(target)
            if target >= total_units:
                raise ValueError(f"prune_layers: ratio: {ratio} of {total_units} {unit}s removes them all; expected "
                                 "at least one to remain")
        spent = 0.0
        for round_index in range(rounds):
            round_target = target * (round_index + 1) / rounds - spent
            if round_target <= 1e-9:
                continue
            _, block_list = _blocks(model, blocks)
            scores = score_layers(model, calib_items, sublayers=unit == "sublayer", blocks=blocks,
                                  progress=progress, distributed=distributed, process_group=process_group)
            report.scores.append([{"index": origin[i], **row} for i, row in enumerate(scores)])
            if unit == "block":
                candidates = [(row["block"], i, _parameters(block_list[i])) for i, row in enumerate(scores)]
            else:
                candidates = [(row[s], (i, s), _sublayer_parameters(block_list[i], s))
                              for i, row in enumerate(scores) for s in SUBLAYERS if row[s] is not None]
            chosen = _choose(candidates, round_target, budget)
            if budget == "units" and len(chosen) >= len(candidates):
                chosen = chosen[: len(candidates) - 1]
            if not chosen:
                continue
            block_params = {i: _parameters(block_list[i]) for i in range(len(block_list))}
            if unit == "block":
                spent += len(chosen) if budget == "units" else sum(block_params[i] for i in chosen)
                report.removed += [origin[i] for i in chosen]
                changes = remove_blocks(model, chosen, blocks=blocks)
                origin = [o for i, o in enumerate(origin) if i not in set(chosen)]
            else:
                spent += len(chosen) if budget == "units" else \
                    sum(_sublayer_parameters(block_list[i], s) for i, s in chosen)
                report.removed += [f"{origin[i]}.{s}" for i, s in chosen]
                changes = remove_sublayers(model, chosen, blocks=blocks)
                kept = [i for i, block in enumerate(block_list)
                        if not all(_is_removed(block, s) for s in SUBLAYERS)]
                origin = [origin[i] for i in kept]
    _, block_list = _blocks(model, blocks)
    report.blocks_after = len(block_list)
    report.config_changes = _json_safe(changes)
    if unit == "sublayer" and getattr(getattr(model, "config", None), CONFIG_FIELD, None) is None:
        report.reload = "from_pretrained"  # only whole blocks went (or nothing)
    report.parameters_after = count_parameters(model)
    report.block_parameters_after = _parameters(block_list)
    if timing is not None:
        report.forward_seconds_after = forward_seconds(model, timing)
    if eval_batches is not None:
        report.perplexity_after = perplexity(model, eval_batches)
    report.seconds = time.perf_counter() - started
    logger.info("%s", report.summary())
    return report


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
