"""Where each supported transformers family keeps what SliceGPT touches: the modules writing the
residual stream before the first block (embeddings), each block's two norms with the linears
reading them and the linears writing back, the final norm and the LM head. Checks that a model's
norms can be folded live here too."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .modules import is_conv1d

__all__ = ["Family", "FAMILIES", "MODEL_TYPES", "resolve_family", "SlicingError"]


class SlicingError(ValueError):
    """A model, ratio or calibration set that SliceGPT cannot slice; raised before anything changes."""


@dataclass(frozen=True)
class Family:
    name: str
    layer_norm: bool  # LayerNorm (mean subtraction folded away by centring the residual writers) or RMSNorm
    blocks: str
    embeddings: tuple[str, ...]
    final_norm: str
    head: str
    attn_norm: str
    attn_inputs: tuple[str, ...]
    attn_output: str
    mlp_norm: str
    mlp_inputs: tuple[str, ...]
    mlp_output: str

    def block_linears(self) -> tuple[str, ...]:
        return self.attn_inputs + (self.attn_output,) + self.mlp_inputs + (self.mlp_output,)


_LLAMA = Family("llama", False, "model.layers", ("model.embed_tokens",), "model.norm", "lm_head",
                "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj",
                "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")
_OPT = Family("opt", True, "model.decoder.layers", ("model.decoder.embed_tokens", "model.decoder.embed_positions"),
              "model.decoder.final_layer_norm", "lm_head",
              "self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
              "self_attn.out_proj", "final_layer_norm", ("fc1",), "fc2")
_GPT2 = Family("gpt2", True, "transformer.h", ("transformer.wte", "transformer.wpe"), "transformer.ln_f", "lm_head",
               "ln_1", ("attn.c_attn",), "attn.c_proj", "ln_2", ("mlp.c_fc",), "mlp.c_proj")

FAMILIES = {family.name: family for family in (_LLAMA, _OPT, _GPT2)}
# config.model_type -> the family whose module layout it has (SmolLM2 is a Llama)
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "opt": "opt", "gpt2": "gpt2"}


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def norm_eps(norm: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(norm, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise SlicingError(f"ratio/model: the norm {type(norm).__name__} has no eps attribute")


def check_norm(name: str, norm: nn.Module | None, family: Family, hidden: int) -> None:
    """A norm SliceGPT can fold: an RMSNorm (scale only) for Llama-like models, a LayerNorm over
    the hidden size for OPT and GPT-2."""
    if norm is None:
        raise SlicingError(f"model: expected a norm at '{name}' to fold, but the model has none there (a "
                           "model without its pre-norms or final norm cannot be sliced)")
    if family.layer_norm:
        ok = isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (hidden,)
        expected = f"nn.LayerNorm over ({hidden},)"
    else:
        weight = getattr(norm, "weight", None)
        ok = (type(norm).__name__.endswith("RMSNorm") and isinstance(weight, nn.Parameter)
              and tuple(weight.shape) == (hidden,) and getattr(norm, "bias", None) is None)
        expected = f"an RMSNorm with a ({hidden},) scale and no bias"
    if not ok:
        raise SlicingError(f"model: norm '{name}' cannot be folded: expected {expected}, but got "
                           f"{type(norm).__name__}{tuple(getattr(getattr(norm, 'weight', None), 'shape', ()))}")
    norm_eps(norm)


def resolve_family(model: nn.Module) -> Family:
    """The model's family, after checking that it has the layout SliceGPT folds and rotates."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise SlicingError(f"model: expected a Hugging Face causal LM of type {sorted(MODEL_TYPES)}, but got "
                           f"{type(model).__name__} (model_type {model_type!r})")
    family = FAMILIES[MODEL_TYPES[model_type]]
    if getattr(config, "prunekit_slicing", None):
        raise SlicingError("model: expected a dense model, but it is already sliced (config.prunekit_slicing is set)")
    hidden = int(config.hidden_size)
    missing = [name for name in (family.blocks, family.head) + family.embeddings if _module(model, name) is None]
    if missing:
        raise SlicingError(f"model: expected a {type(model).__name__} with modules {missing} (a causal LM with its "
                           f"head, e.g. {model_type.capitalize()}ForCausalLM), but they are missing")
    if family.name == "opt":
        if not getattr(config, "do_layer_norm_before", True):
            raise SlicingError("model: its norms cannot be folded: OPT with do_layer_norm_before=False normalises "
                               "after the residual add (post-norm), and SliceGPT needs pre-norm blocks")
        if _module(model, "model.decoder.project_in") is not None or \
                _module(model, "model.decoder.project_out") is not None:
            raise SlicingError("model: expected an OPT whose word_embed_proj_dim equals hidden_size, but it has "
                               "project_in/project_out")
    if family.name == "gpt2" and getattr(config, "add_cross_attention", False):
        raise SlicingError("model: expected a GPT-2 without cross-attention, but add_cross_attention is set")
    check_norm(family.final_norm, _module(model, family.final_norm), family, hidden)
    for name in family.embeddings:
        embedding = _module(model, name)
        if not isinstance(embedding, nn.Embedding) or embedding.weight.shape[1] != hidden:
            raise SlicingError(f"model: expected '{name}' to be an nn.Embedding of width {hidden}, but got "
                               f"{type(embedding).__name__}")
    head = _module(model, family.head)
    if not isinstance(head, nn.Linear) or head.in_features != hidden:
        raise SlicingError(f"model: expected '{family.head}' to be an nn.Linear reading {hidden} features, but got "
                           f"{type(head).__name__}")
    blocks = model.get_submodule(family.blocks)
    for index, block in enumerate(blocks):
        prefix = f"{family.blocks}.{index}"
        for norm in (family.attn_norm, family.mlp_norm):
            check_norm(f"{prefix}.{norm}", _module(block, norm), family, hidden)
        for name in family.block_linears():
            linear = _module(block, name)
            if not (type(linear) is nn.Linear or is_conv1d(linear)):
                raise SlicingError(f"model: expected '{prefix}.{name}' to be a dense nn.Linear (or GPT-2 Conv1D), "
                                   f"but got {type(linear).__name__} (slice before sparsifying or quantising)")
    return family
