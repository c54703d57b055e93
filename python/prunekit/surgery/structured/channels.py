"""Channel surgery: slice the parameters of one module so that it keeps only some of its channels.

Each function cuts one module (nn.Linear, transformers' Conv1D, nn.Conv2d, depthwise nn.Conv2d,
BatchNorm) in place and fixes its size attributes, so that the module stays a plain, smaller
dense module. Which channels go is decided elsewhere (:mod:`.pruner`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["channel_kind", "prune_output_channels", "prune_input_channels", "prune_through_channels", "add_to_bias"]


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2), recognised by name so that transformers stays optional."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def channel_kind(module: nn.Module) -> str | None:
    """How structured pruning sees ``module``: "linear", "conv1d" (transformers' Conv1D, weight
    (in, out)), "conv2d" (groups=1), "depthwise" (Conv2d with groups == in == out channels),
    "batchnorm", or None (not channel-prunable)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if is_hf_conv1d(module):
        return "conv1d"
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "conv2d"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    return None


def _check_keep(keep, size: int, what: str) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() == 0:
        raise ValueError(f"keep: expected at least one {what} to keep (of {size}), but got none")
    if int(keep.min()) < 0 or int(keep.max()) >= size:
        raise ValueError(f"keep: expected {what} indices in [0, {size}), but got values in "
                         f"[{int(keep.min())}, {int(keep.max())}]")
    if keep.numel() > 1 and not bool((keep[1:] > keep[:-1]).all()):
        raise ValueError(f"keep: expected strictly increasing {what} indices, but got {keep.tolist()[:16]}...")
    return keep


def _set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad))


def _unsupported(module: nn.Module, what: str, allowed: str) -> ValueError:
    extra = ""
    if isinstance(module, nn.Conv2d):
        extra = f" (groups={module.groups}, in_channels={module.in_channels}, out_channels={module.out_channels})"
    return ValueError(f"module: expected {allowed} to prune {what}, but got {type(module).__name__}{extra}")


@torch.no_grad()
def prune_output_channels(module: nn.Module, keep) -> None:
    """Keeps only the output channels ``keep`` (sorted indices) of an nn.Linear (weight rows, bias),
    a transformers Conv1D (weight columns, bias, ``nf``) or an nn.Conv2d with groups=1, in place.
    Depthwise convolutions and BatchNorm go through :func:`prune_through_channels`."""
    kind = channel_kind(module)
    if kind == "linear":
        keep = _check_keep(keep, module.out_features, "output channel").to(module.weight.device)
        _set_parameter(module, "weight", module.weight[keep])
        module.out_features = keep.numel()
    elif kind == "conv1d":
        keep = _check_keep(keep, module.weight.shape[1], "output channel").to(module.weight.device)
        _set_parameter(module, "weight", module.weight[:, keep])
        module.nf = keep.numel()
    elif kind == "conv2d":
        keep = _check_keep(keep, module.out_channels, "output channel").to(module.weight.device)
        _set_parameter(module, "weight", module.weight[keep])
        module.out_channels = keep.numel()
    else:
        raise _unsupported(module, "output channels", "nn.Linear, transformers Conv1D or nn.Conv2d (groups=1)")
    if getattr(module, "bias", None) is not None:
        _set_parameter(module, "bias", module.bias[keep])


@torch.no_grad()
def prune_input_channels(module: nn.Module, keep) -> None:
    """Keeps only the input channels ``keep`` of an nn.Linear (weight columns), a transformers
    Conv1D (weight rows) or an nn.Conv2d with groups=1 (weight[:, keep]), in place."""
    kind = channel_kind(module)
    if kind == "linear":
        keep = _check_keep(keep, module.in_features, "input channel").to(module.weight.device)
        _set_parameter(module, "weight", module.weight[:, keep])
        module.in_features = keep.numel()
    elif kind == "conv1d":
        keep = _check_keep(keep, module.weight.shape[0], "input channel").to(module.weight.device)
        _set_parameter(module, "weight", module.weight[keep])
    elif kind == "conv2d":
        keep = _check_keep(keep, module.in_channels, "input channel").to(module.weight.device)
        _set_parameter(module, "weight", module.weight[:, keep])
        module.in_channels = keep.numel()
    else:
        raise _unsupported(module, "input channels", "nn.Linear, transformers Conv1D or nn.Conv2d (groups=1)")


@torch.no_grad()
def prune_through_channels(module: nn.Module, keep) -> None:
    """Keeps only the channels ``keep`` of a module that maps channel c to channel c: BatchNorm
    (affine parameters and running statistics) or a depthwise nn.Conv2d (groups follow)."""
    kind = channel_kind(module)
    if kind == "batchnorm":
        keep = _check_keep(keep, module.num_features, "channel")
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                _set_parameter(module, name, getattr(module, name)[keep.to(getattr(module, name).device)])
        for name in ("running_mean", "running_var"):
            buffer = getattr(module, name, None)
            if buffer is not None:
                setattr(module, name, buffer[keep.to(buffer.device)].clone())
        module.num_features = keep.numel()
    elif kind == "depthwise":
        keep = _check_keep(keep, module.out_channels, "channel").to(module.weight.device)
        _set_parameter(module, "weight", module.weight[keep])
        if module.bias is not None:
            _set_parameter(module, "bias", module.bias[keep])
        module.in_channels = module.out_channels = module.groups = keep.numel()
    else:
        raise _unsupported(module, "channels", "a BatchNorm or a depthwise nn.Conv2d (groups == channels)")


@torch.no_grad()
def add_to_bias(module: nn.Module, delta: torch.Tensor) -> bool:
    """Adds ``delta`` (out_features,) to the bias of an nn.Linear, Conv1D or nn.Conv2d, creating a
    zero bias first if the module has none. Returns True when a bias was created."""
    kind = channel_kind(module)
    if kind not in ("linear", "conv1d", "conv2d"):
        raise _unsupported(module, "a bias", "nn.Linear, transformers Conv1D or nn.Conv2d (groups=1)")
    weight = module.weight
    out = weight.shape[1] if kind == "conv1d" else weight.shape[0]
    if delta.shape != (out,):
        raise ValueError(f"delta: expected shape ({out},) for {type(module).__name__}, but got {tuple(delta.shape)}")
    created = getattr(module, "bias", None) is None
    if created:
        module.bias = nn.Parameter(torch.zeros(out, dtype=weight.dtype, device=weight.device),
                                   requires_grad=weight.requires_grad)
    module.bias.add_(delta.to(device=module.bias.device, dtype=module.bias.dtype))
    return created

