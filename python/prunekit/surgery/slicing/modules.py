"""The modules of a sliced transformer: the scale-free RMS norm that replaces every folded norm,
the decoder-layer classes that add the residual-stream shortcut rotations, and the helpers that
give a Linear or a transformers Conv1D new weights (and sizes) in place."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResidualRMSNorm", "SlicedLayerMixin", "sliced_layer_class", "linear_matrix", "linear_bias",
           "set_linear", "set_embedding", "is_conv1d"]


class ResidualRMSNorm(nn.Module):
    """``x / sqrt(sum(x^2) / dim + eps)``: an RMS norm without a scale (the scale is folded into the
    linears that read it). It divides by the dense model's width ``dim``, not by the sliced width,
    so a rotated and sliced residual stream is normalised as the full one was."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim = int(dim)
        self.eps = float(eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden = hidden_states.float()
        mean_square = hidden.pow(2).sum(-1, keepdim=True) / self.dim
        return (hidden * torch.rsqrt(mean_square + self.eps)).to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


def _shortcut(rotation: nn.Module | None, residual: torch.Tensor) -> torch.Tensor:
    return residual if rotation is None else rotation(residual)


class SlicedLayerMixin:
    """The forward of a sliced decoder layer: ``m = S_attn(x) + attention(norm(x))``, then
    ``y = S_mlp(m) + mlp(norm(m))``, where the shortcuts ``attn_shortcut`` / ``mlp_shortcut``
    (bias-free Linears, or None where the two sides share one basis) rotate the residual stream
    from the basis of one boundary into the next. Mixed in before the transformers layer class, so
    the layer keeps its class for isinstance checks and its attributes (``attention_type``, ...)."""

    slicing_family: str

    def attention_branch(self, hidden_states: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        family = self.slicing_family
        if family == "llama":
            if args:
                raise TypeError(f"{type(self).__name__}: expected keyword arguments after hidden_states, but got "
                                f"{len(args)} positional ones")
            output, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
            return output
        if family == "opt":
            if args:
                raise TypeError(f"{type(self).__name__}: expected keyword arguments after hidden_states, but got "
                                f"{len(args)} positional ones")
            kwargs = dict(kwargs)
            kwargs.pop("use_cache", None)  # OPTDecoderLayer does not hand it to its attention
            output, _ = self.self_attn(hidden_states=self.self_attn_layer_norm(hidden_states), **kwargs)
            return F.dropout(output, p=self.dropout, training=self.training)
        if family == "gpt2":
            kwargs = dict(kwargs)
            # GPT2Model passes these positionally (for gradient checkpointing)
            for name, value in zip(("cache", "attention_mask", "encoder_hidden_states"), args):
                kwargs[name] = value
            if "past_key_values" in kwargs:
                kwargs["cache"] = kwargs.pop("past_key_values")
            if kwargs.pop("encoder_hidden_states", None) is not None:
                raise ValueError(f"{type(self).__name__}: a sliced GPT-2 block has no cross-attention, but "
                                 "encoder_hidden_states were passed")
            kwargs.pop("encoder_attention_mask", None)
            output, _ = self.attn(self.ln_1(hidden_states), **kwargs)
            return output
        raise RuntimeError(f"{type(self).__name__}: unknown slicing family {family!r}")

    def mlp_branch(self, hidden_states: torch.Tensor) -> torch.Tensor:
        family = self.slicing_family
        if family == "llama":
            return self.mlp(self.post_attention_layernorm(hidden_states))
        if family == "opt":
            hidden = self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(hidden_states))))
            return F.dropout(hidden, p=self.dropout, training=self.training)
        if family == "gpt2":
            return self.mlp(self.ln_2(hidden_states))
        raise RuntimeError(f"{type(self).__name__}: unknown slicing family {family!r}")

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        hidden = _shortcut(self.attn_shortcut, hidden_states) + self.attention_branch(hidden_states, args, kwargs)
        return _shortcut(self.mlp_shortcut, hidden) + self.mlp_branch(hidden)


_SLICED_CLASSES: dict[type, type] = {}


def sliced_layer_class(layer_class: type) -> type:
    """``Sliced<LayerClass>``: the transformers layer class with :class:`SlicedLayerMixin`'s forward
    (one class per layer class, made once)."""
    if issubclass(layer_class, SlicedLayerMixin):
        return layer_class
    if layer_class not in _SLICED_CLASSES:
        _SLICED_CLASSES[layer_class] = type(f"Sliced{layer_class.__name__}", (SlicedLayerMixin, layer_class),
                                            {"__module__": __name__})
    return _SLICED_CLASSES[layer_class]


# ----------------------------------------------------------------------------- linears and embeddings

def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a Linear whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def linear_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def linear_bias(module: nn.Module) -> torch.Tensor | None:
    return module.bias


def set_linear(module: nn.Module, matrix: torch.Tensor, bias: torch.Tensor | None, set_attr=setattr) -> None:
    """Gives a Linear or Conv1D the weight ``matrix`` (out, in) and ``bias`` (None: no bias), and
    the sizes that go with them. ``set_attr``: how attributes are set (the slicer journals them)."""
    out_features, in_features = matrix.shape
    if is_conv1d(module):
        set_attr(module, "weight", nn.Parameter(matrix.t().contiguous()))
        set_attr(module, "nf", out_features)
    else:
        set_attr(module, "weight", nn.Parameter(matrix.contiguous()))
        set_attr(module, "in_features", in_features)
        set_attr(module, "out_features", out_features)
    set_attr(module, "bias", None if bias is None else nn.Parameter(bias.contiguous()))


def set_embedding(module: nn.Embedding, weight: torch.Tensor, set_attr=setattr) -> None:
    set_attr(module, "weight", nn.Parameter(weight.contiguous()))
    set_attr(module, "embedding_dim", weight.shape[1])
