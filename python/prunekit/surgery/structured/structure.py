"""The structure of a model: all of its prunable groups.

For a Hugging Face transformer (a config with ``num_attention_heads`` and a block list) each block
is recorded separately, which finds the MLP's coupled channels of every architecture
(Llama/Mistral/Qwen2 gate+up -> down, OPT fc1 -> fc2, GPT-2 c_fc -> c_proj, BERT
intermediate.dense -> output.dense) from the block's forward, not from a table of names; its
attention heads come from :mod:`.attention`. Any other model is analysed whole
(:func:`~.channel_groups.find_channel_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ...calibrate.pipeline import CalibrationBatch, capture_block_inputs, find_blocks, model_device
from .attention import attention_layout, config_value, find_attention_group
from .channel_groups import ChannelAnalysis, ChannelGroup, drop_tied_groups, find_channel_groups
from .graph import record_graph

__all__ = ["ModelStructure", "find_structure", "hf_config"]


@dataclass
class ModelStructure:
    """What :func:`find_structure` found: the prunable groups, why other modules' output channels
    cannot be pruned ({name: reason}), and for transformers the block list, the attention layout
    and the blocks in which no attention module matched the layout."""

    groups: list[ChannelGroup]
    blocked: dict[str, str]
    transformer: bool
    blocks_name: str | None = None
    layout: dict | None = None
    heads_missing: list[str] = field(default_factory=list)


def hf_config(model: nn.Module):
    """The Hugging Face config of ``model``, or None (a ``config`` attribute without ``to_dict`` is not one)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    return config


def _dummy_hf_input(model: nn.Module) -> dict:
    # any valid token ids do: the recorded graph depends on shapes, not values
    vocab = int(config_value(hf_config(model), "vocab_size", default=2))
    ids = (torch.arange(8) % max(vocab, 1)).unsqueeze(0).to(model_device(model))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def find_structure(model: nn.Module, example_inputs=None, *, blocks: str | None = None,
                   head_unit: str = "kv_group") -> ModelStructure:
    """All prunable groups of ``model``: for a Hugging Face transformer (a config with attention
    heads and a block list) per block its MLP channel groups (recorded from the block's forward)
    and its attention heads; otherwise the channel groups of the whole model."""
    config = hf_config(model)
    layout = attention_layout(config) if config is not None else None
    found = find_blocks(model, blocks) if layout is not None else None
    if found is None:
        groups, blocked = find_channel_groups(model, example_inputs)
        return ModelStructure(groups, blocked, transformer=False)
    blocks_name, block_list = found
    if example_inputs is None:
        example_inputs = _dummy_hf_input(model)
    batch = CalibrationBatch.from_item(example_inputs, 0)
    device = model_device(model)
    captured = capture_block_inputs(model, blocks_name, block_list, [batch], device)[0]
    groups, blocked, missing = [], {}, []
    for index, block in enumerate(block_list):
        prefix = f"{blocks_name}.{index}."
        graph = record_graph(block, (captured.hidden, *captured.args), captured.kwargs)
        analysis = ChannelAnalysis(graph, dict(block.named_modules()), f"{blocks_name}.{index}").run()
        block_groups, block_blocked = analysis.groups(prefix)
        block_groups, block_blocked = drop_tied_groups(model, block_groups, block_blocked)
        for group in block_groups:
            group.kind, group.block = "mlp", index
        attention = find_attention_group(block, f"{blocks_name}.{index}", layout, index, head_unit)
        attention_members = set()
        if attention is None:
            missing.append(f"{blocks_name}.{index}")
        else:
            attention_members = {m.name for m in attention.members}
            groups.append(attention)
        groups.extend(g for g in block_groups if not attention_members & {m.name for m in g.members})
        blocked.update(block_blocked)
    return ModelStructure(groups, blocked, True, blocks_name, layout, missing)

