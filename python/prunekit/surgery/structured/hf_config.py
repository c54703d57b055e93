"""Hugging Face config updates after structured pruning.

A Hugging Face config holds one MLP width and one head count for all layers: the new width and head
counts are written when every block has the same, and the updated config is checked by building
the model class from it (on the meta device) and comparing parameter names and shapes with the
pruned model. Where the config cannot describe the result, the report says so and warns.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .attention import heads_after
from .channels import channel_kind
from .report import StructuredReport
from .structure import ModelStructure

__all__ = ["update_hf_config"]


_MLP_CONFIG_ATTRIBUTES = ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff")


def update_hf_config(model: nn.Module, config, plan, structure: ModelStructure, report: StructuredReport) -> None:
    """Writes the new MLP width and head counts into ``config`` when every block has the same
    (one width per config), then checks that the config rebuilds the pruned model."""
    layout = structure.layout
    if all(k == g.units for g, k in plan):
        report.config_reloadable = True
        return
    kept_by_group = {id(g): k for g, k in plan}

    def sizes(kind):  # (units before, after) of every group of ``kind``, pruned or not
        return [(g, g.units, kept_by_group.get(id(g), g.units)) for g in structure.groups if g.kind == kind]

    mlp = sizes("mlp")
    if any(after != before for _, before, after in mlp):
        befores, afters = {b for _, b, _ in mlp}, {a for _, _, a in mlp}
        blocks = [g.block for g, _, _ in mlp]
        if len(befores) == 1 and len(afters) == 1 and len(set(blocks)) == len(blocks):
            old, new = befores.pop(), afters.pop()
            names = [n for n in _MLP_CONFIG_ATTRIBUTES if getattr(config, n, None) == old]
            if not names and getattr(config, "n_inner", "missing") is None and old == 4 * layout["hidden"]:
                names = ["n_inner"]  # GPT-2: None means 4 * n_embd
            for name in names[:1]:
                report.config_updates[name] = [getattr(config, name), new]
                setattr(config, name, new)
            for group, _, _ in mlp:  # modules that keep a copy of the width (e.g. LlamaMLP.intermediate_size)
                block = model.get_submodule(f"{structure.blocks_name}.{group.block}")
                for module in block.modules():
                    for name in _MLP_CONFIG_ATTRIBUTES:
                        if getattr(module, name, None) == old:
                            setattr(module, name, new)
            if not names:
                report.warnings.append(f"config: no attribute of {type(config).__name__} holds the MLP width "
                                       f"{old}; the config still describes the unpruned width")
        else:
            report.warnings.append(f"config: MLP widths differ between blocks ({sorted(afters)}); a Hugging Face "
                                   "config holds one width, so it was not updated")
    heads = sizes("heads")
    if any(after != before for _, before, after in heads):
        afters = {heads_after(g, a) for g, _, a in heads}
        if len(afters) == 1:
            new_heads, new_kv = afters.pop()
            report.config_updates["num_attention_heads"] = [layout["heads"], new_heads]
            config.num_attention_heads = new_heads
            if getattr(config, "num_key_value_heads", None) is not None:
                report.config_updates["num_key_value_heads"] = [config.num_key_value_heads, new_kv]
                config.num_key_value_heads = new_kv
            if getattr(config, "head_dim", None) != layout["head_dim"]:
                report.config_updates["head_dim"] = [getattr(config, "head_dim", None), layout["head_dim"]]
                config.head_dim = layout["head_dim"]
        else:
            report.warnings.append(f"config: key/value head counts differ between blocks ({sorted(afters)}); a "
                                   "Hugging Face config holds one count, so it was not updated")
    report.config_reloadable = _make_config_reloadable(model, config, report)


def _fresh_shapes(model: nn.Module, config) -> tuple[dict[str, tuple] | None, str]:
    """Parameter shapes of ``type(model)`` built (on the meta device) from ``config`` after a round
    trip through its dict form, as from_pretrained would see it (validators included); or None and
    the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rebuilt = type(config).from_dict(config.to_dict())
            validate = getattr(rebuilt, "validate", None)
            if callable(validate):
                validate()
            rebuilt._attn_implementation = getattr(config, "_attn_implementation", None)
            with torch.device("meta"):
                fresh = type(model)(rebuilt)
    except Exception as error:  # the config describes an impossible model
        cause = getattr(error, "__cause__", None) or error
        return None, f"{type(cause).__name__}: {cause}"
    return {k: tuple(v.shape) for k, v in fresh.state_dict().items()}, ""


def _make_config_reloadable(model: nn.Module, config, report: StructuredReport) -> bool:
    """Checks that ``type(model)(config)`` has the pruned model's parameter names and shapes. Biases
    created by compensation are made expressible where the config has a switch for them (e.g.
    Llama's mlp_bias / attention_bias; the sibling layers it adds biases to get zero biases)."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fresh, failure = _fresh_shapes(model, config)
    if fresh is not None and fresh != ours and report.biases_created:
        missing = set(ours) - set(fresh)
        for name in [n for n, v in vars(config).items() if n.endswith("bias") and v is False]:
            if not missing:
                break
            setattr(config, name, True)
            trial, _ = _fresh_shapes(model, config)
            if trial is not None and len(set(ours) - set(trial)) < len(missing):
                report.config_updates[name] = [False, True]
                fresh, missing = trial, set(ours) - set(trial)
            else:
                setattr(config, name, False)
        for key in set(fresh) - set(ours):  # zero biases for the siblings the switch also covers
            module_name, _, leaf = key.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            if leaf == "bias" and getattr(module, "bias", "missing") is None and channel_kind(module) is not None:
                weight = module.weight
                out = weight.shape[1] if channel_kind(module) == "conv1d" else weight.shape[0]
                module.bias = nn.Parameter(torch.zeros(out, dtype=weight.dtype, device=weight.device),
                                           requires_grad=weight.requires_grad)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if fresh == ours:
        return True
    if fresh is None:
        detail = f"building {type(model).__name__} from it fails: {failure}"
    else:
        diff = sorted(k for k in set(fresh) | set(ours) if fresh.get(k) != ours.get(k))
        detail = f"it rebuilds different parameters ({diff[0]}: config {fresh.get(diff[0])}, pruned " \
                 f"{ours.get(diff[0])}, and {len(diff) - 1} more)"
    report.warnings.append(f"config: the updated {type(config).__name__} does not describe the pruned model "
                           f"({detail}); save_pretrained/from_pretrained will not reload it. "
                           "Save the whole model with torch.save instead.")
    return False
