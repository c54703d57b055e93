"""Attention heads as channel groups, grouped-query attention included.

Attention heads are not found by the channel-group analysis (views into heads and the softmax block
it); they are found from the Hugging Face config (num_attention_heads, num_key_value_heads,
head_dim) and the block's module structure: the smallest submodule of the block whose prunable
layers are input projections of sizes q/k/v (or one fused q|k|v projection, as GPT-2's c_attn)
followed by one output projection of size (heads * head_dim -> hidden). A key/value head and the
query heads sharing it (grouped-query attention) form one unit, so num_attention_heads /
num_key_value_heads is preserved; or, with ``head_unit="query_head"``, single query heads are
removed, the same number under every key/value head.
"""

from __future__ import annotations

import torch.nn as nn

from .channel_groups import ChannelGroup, ChannelMember
from .channels import channel_kind

__all__ = ["HEAD_UNITS", "attention_layout", "find_attention_group", "heads_after", "update_attention_attributes"]


def config_value(config, *names, default=None):
    """The first of the attributes ``names`` that ``config`` sets (architectures name them differently)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def attention_layout(config) -> dict | None:
    """{heads, kv_heads, head_dim, hidden} of a Hugging Face config, or None if it has no attention."""
    heads = config_value(config, "num_attention_heads", "n_head", "num_heads")
    hidden = config_value(config, "hidden_size", "n_embd", "d_model")
    if not isinstance(heads, int) or not isinstance(hidden, int):
        return None
    kv = config_value(config, "num_key_value_heads", default=heads)
    head_dim = config_value(config, "head_dim", default=hidden // heads)
    if not isinstance(kv, int) or kv <= 0 or heads % kv:
        return None
    return {"heads": heads, "kv_heads": kv, "head_dim": int(head_dim), "hidden": hidden}


def _io(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or Conv1D."""
    kind = channel_kind(module)
    weight = module.weight
    if kind == "conv1d":
        return weight.shape[0], weight.shape[1]
    return weight.shape[1], weight.shape[0]


HEAD_UNITS = ("kv_group", "query_head")


def find_attention_group(block: nn.Module, block_name: str, layout: dict, index: int,
                         unit: str = "kv_group") -> ChannelGroup | None:
    """The attention heads of one transformer block as a channel group (see the module docstring);
    None if no submodule matches. ``unit`` "kv_group": a unit is a key/value head with its query
    heads (q, k, v rows and o columns go together); "query_head": a unit is one query head (q rows,
    o columns), the key/value heads stay and every key/value head keeps the same number of query
    heads (the pruner selects per group)."""
    heads, kv, hd, hidden = layout["heads"], layout["kv_heads"], layout["head_dim"], layout["hidden"]
    group_size = heads // kv
    for name, module in block.named_modules():
        if not name:
            continue
        leaves = [(n, m) for n, m in module.named_modules() if channel_kind(m) in ("linear", "conv1d")]
        if len(leaves) not in (2, 4):
            continue
        o_name, o = leaves[-1]
        if _io(o) != (heads * hd, hidden):
            continue
        projections = leaves[:-1]
        if any(_io(m)[0] != hidden for _, m in projections):
            continue
        full = lambda n: f"{block_name}.{name}.{n}"  # noqa: E731
        if len(projections) == 1:
            fused_name, fused = projections[0]
            if _io(fused)[1] != (heads + 2 * kv) * hd:
                continue
            members = [ChannelMember(full(fused_name), fused, "out", 0, group_size * hd),
                       ChannelMember(full(fused_name), fused, "out", heads * hd, hd),
                       ChannelMember(full(fused_name), fused, "out", (heads + kv) * hd, hd)]
            roles = {"q": full(fused_name), "k": full(fused_name), "v": full(fused_name)}
        else:
            outs = [_io(m)[1] for _, m in projections]
            if sorted(outs) != sorted([heads * hd, kv * hd, kv * hd]):
                continue
            q_position = outs.index(heads * hd) if heads != kv else 0
            order = [q_position] + [i for i in range(3) if i != q_position]
            members, roles = [], {}
            for role, position in zip("qkv", order):
                p_name, p = projections[position]
                members.append(ChannelMember(full(p_name), p, "out", 0, group_size * hd if role == "q" else hd))
                roles[role] = full(p_name)
        members.append(ChannelMember(full(o_name), o, "in", 0, group_size * hd))
        roles["o"] = full(o_name)
        units = kv
        if unit == "query_head":  # q rows and o columns per query head; k and v stay
            members = [ChannelMember(members[0].name, members[0].module, "out", 0, hd),
                       ChannelMember(full(o_name), o, "in", 0, hd)]
            units = heads
        attention = dict(layout, module=f"{block_name}.{name}", roles=roles, unit=unit)
        return ChannelGroup(f"{block_name}.{name}.heads", "heads", units, members, block=index, attention=attention)
    return None


_HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_KV_ATTRIBUTES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv")
_WIDTH_ATTRIBUTES = ("all_head_size", "split_size", "inner_dim")


def heads_after(group: ChannelGroup, kept: int) -> tuple[int, int]:
    """(query heads, key/value heads) of a "heads" group that keeps ``kept`` units."""
    attention = group.attention
    if attention.get("unit") == "query_head":
        return kept, attention["kv_heads"]
    return kept * (attention["heads"] // attention["kv_heads"]), kept


def update_attention_attributes(attention: nn.Module, old: dict, new_heads: int, new_kv: int) -> None:
    """Sets the head counts (and head-count-derived widths such as BERT's all_head_size or GPT-2's
    split_size, and the query heads per key/value head) that an attention module and its
    submodules keep as attributes; head_dim is kept."""
    updates = [(_HEAD_ATTRIBUTES, old["heads"], new_heads), (_KV_ATTRIBUTES, old["kv_heads"], new_kv),
               (_WIDTH_ATTRIBUTES, old["heads"] * old["head_dim"], new_heads * old["head_dim"]),
               (("num_key_value_groups",), old["heads"] // old["kv_heads"], new_heads // new_kv)]
    for module in attention.modules():
        for names, before, after in updates:
            for name in names:
                value = getattr(module, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value == before:
                    setattr(module, name, after)

