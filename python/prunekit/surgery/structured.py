"""Structured pruning that physically shrinks a model: whole channels, MLP intermediate features
and attention heads are removed, so the pruned modules are smaller dense modules.

Three layers, as in Torch-Pruning:

1. **Low-level surgery** (:func:`prune_output_channels`, :func:`prune_input_channels`,
   :func:`prune_through_channels`, :func:`add_to_bias`): slice the parameters of one module
   (nn.Linear, transformers' Conv1D, nn.Conv2d, depthwise nn.Conv2d, BatchNorm) and fix its
   size attributes.
2. **Dependency tracking** (:func:`find_channel_groups`): channels that must go together are
   found on a graph of the model's forward. For a plain model (CNNs) the graph comes from
   ``torch.fx`` symbolic tracing plus shape propagation on ``example_inputs``; where symbolic
   tracing fails (Python control flow on tensors, decorated forwards such as those of Hugging
   Face blocks) the same kind of ``torch.fx.Graph`` is *recorded* from one real forward under a
   ``TorchFunctionMode`` (every torch function called outside leaf modules becomes a node, leaf
   modules become ``call_module`` nodes). One analysis runs on either graph: every tensor carries a
   *channel space* (union-find); Linear/Conv2d outputs open a new space (their output channels),
   their inputs consume one (their input channels); BatchNorm, depthwise convolutions,
   activations, dropout, pooling and channel-preserving reshapes pass the space through;
   elementwise add/mul of two spaces merges them (a residual add couples the channels of every
   conv feeding it); everything else (the model's inputs and outputs, normalisations over the
   channels, reductions over them, indexing, concatenation, transposes, attention arithmetic)
   *blocks* the space. Every unblocked space is a :class:`ChannelGroup`: producers whose output
   rows go, consumers whose input columns go, pass-through modules sliced alongside.
3. **The pruner** (:func:`prune_structured`): scores each group's units with an importance
   criterion (:mod:`prunekit.solvers.structured`), keeps the best ``kept_units`` of them, cuts the
   modules, compensates biases (FLAP) and, for Hugging Face models, updates the config.

For Hugging Face transformers (a config with ``num_attention_heads`` and a block list), each
block is recorded separately, which finds the MLP's coupled channels of every architecture
(Llama/Mistral/Qwen2 gate+up -> down, OPT fc1 -> fc2, GPT-2 c_fc -> c_proj, BERT
intermediate.dense -> output.dense) from the block's forward, not from a table of names.
Attention heads are not traceable that way (views into heads, softmax); they are found from the
config (num_attention_heads, num_key_value_heads, head_dim) and the block's module structure:
the smallest submodule of the block whose prunable layers are input projections of sizes q/k/v
(or one fused q|k|v projection, as GPT-2's c_attn) followed by one output projection of size
(heads * head_dim -> hidden). A key/value head and the query heads sharing it (grouped-query
attention) form one unit, so num_attention_heads / num_key_value_heads is preserved; or, with
``head_unit="query_head"``, single query heads are removed, the same number under every
key/value head. Every block keeps the same number of units (a Hugging Face config holds one
width); which units go is decided per block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import math
import operator
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ..calibrate.gradients import accumulate_weight_gradients, language_model_loss
from ..calibrate.pipeline import (CalibrationBatch, LayerInputStats, PrunableLayer, capture_block_inputs,
                                  find_blocks, model_device, walk_blocks)
from ..solvers.structured import (IMPORTANCES, MemberWeights, bias_compensation, kept_units, select_units,
                                  unit_scores)

logger = logging.getLogger(__name__)

__all__ = ["prune_structured", "StructuredReport", "ChannelGroup", "ChannelMember", "find_channel_groups",
           "find_structure", "prune_output_channels", "prune_input_channels", "prune_through_channels",
           "add_to_bias", "channel_kind"]


# ============================================================================ low-level surgery

def _is_hf_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def channel_kind(module: nn.Module) -> str | None:
    """How structured pruning sees ``module``: "linear", "conv1d" (transformers' Conv1D, weight
    (in, out)), "conv2d" (groups=1), "depthwise" (Conv2d with groups == in == out channels),
    "batchnorm", or None (not channel-prunable)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_hf_conv1d(module):
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


# ============================================================================ channel groups

@dataclass
class ChannelMember:
    """One module taking part in a channel group.

    ``role``: "out" (the group's channels are output channels of this module), "in" (input
    channels) or "through" (BatchNorm / depthwise conv: channel c in, channel c out). Unit u of
    the group is this module's channels ``offset + u * width ... offset + (u + 1) * width - 1``
    along the role's axis (``width`` > 1 for attention heads; ``offset`` for fused q|k|v)."""

    name: str
    module: nn.Module
    role: str
    offset: int = 0
    width: int = 1

    @property
    def kind(self) -> str | None:
        return channel_kind(self.module)

    def channels(self, units: torch.Tensor) -> torch.Tensor:
        """(len(units), width) channel indices of ``units``."""
        units = torch.as_tensor(units, dtype=torch.long)
        return self.offset + units[:, None] * self.width + torch.arange(self.width)[None, :]

    def axis_size(self) -> int:
        """Channels of this module along the role's axis."""
        weight = self.module.weight
        kind = self.kind
        if self.role == "through":
            return weight.shape[0] if kind == "depthwise" else self.module.num_features
        if kind == "conv1d":
            return weight.shape[1] if self.role == "out" else weight.shape[0]
        return weight.shape[0] if self.role == "out" else weight.shape[1]


@dataclass
class ChannelGroup:
    """Channels that are removed together. ``units`` prunable units; ``kind`` is "mlp" (a
    transformer block's MLP features), "heads" (key/value heads with their query groups) or
    "channels" (a CNN's channels). ``block``: index in a transformer's block list (None otherwise).
    For "heads", ``attention`` holds the attention module's name and head layout."""

    name: str
    kind: str
    units: int
    members: list[ChannelMember]
    block: int | None = None
    attention: dict | None = None

    @property
    def channels_per_unit(self) -> int:
        return 1 if self.attention is None else int(self.attention["head_dim"])

    def member_names(self) -> list[str]:
        return [f"{m.name}:{m.role}" + (f"[{m.offset}+]" if m.offset else "") for m in self.members]


_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                       nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Identity,
                       nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.PReLU)

_UNARY = {"relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu",
          "elu", "selu", "celu", "mish", "softplus", "softsign", "logsigmoid", "threshold", "dropout", "dropout1d",
          "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "identity", "neg",
          "negative", "abs", "exp", "expm1", "log1p", "sqrt", "rsqrt", "square", "clone", "contiguous", "detach",
          "to", "float", "half", "bfloat16", "double", "type", "type_as", "clamp", "clamp_min", "clamp_max", "clip",
          "erf", "erfc", "sin", "cos", "reciprocal", "nan_to_num"}
_BINARY = {"add", "sub", "mul", "div", "truediv", "floordiv", "true_divide", "maximum", "minimum", "pow", "subtract",
           "multiply", "divide"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCE = {"mean", "sum", "amax", "amin", "nanmean", "nansum"}
_SHAPE_ONLY = {"new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like", "empty_like",
               "full_like", "rand_like", "randn_like", "size", "dim", "numel"}
_TAINT = object()  # a non-tensor value (tuple) computed from channel spaces


def _op_name(target) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    name = name.strip("_")
    if len(name) > 1 and name[0] in "ir" and name[1:] in _BINARY:
        name = name[1:]
    if name.endswith("_") and name[:-1] in _UNARY | _BINARY:
        name = name[:-1]
    return name


class _Spaces:
    """Union-find over channel spaces; a root may be blocked (with the first reason given)."""

    def __init__(self):
        self.parent: list[int] = []
        self.reason: list[str | None] = []

    def new(self, reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.reason.append(reason)
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.reason[a] = self.reason[a] or self.reason[b]
        return a

    def block(self, space: int, reason: str) -> None:
        root = self.find(space)
        if self.reason[root] is None:
            self.reason[root] = reason

    def blocked(self, space: int) -> str | None:
        return self.reason[self.find(space)]


def _is_leaf_module(module: nn.Module) -> bool:
    """Modules that the graph keeps as single nodes: torch.nn modules without submodules (as
    torch.fx does) and transformers' Conv1D."""
    if _is_hf_conv1d(module):
        return True
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return type(module).__module__.startswith("torch.nn") and not any(True for _ in module.children())


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return _is_leaf_module(module) or super().is_leaf_module(module, qualified_name)


def trace_graph(model: nn.Module, example_args: tuple) -> fx.Graph:
    """``torch.fx`` symbolic trace of ``model`` (Conv1D and torch.nn modules as leaves) with every
    node's output shape from a propagation of ``example_args`` in ``node.meta["shape"]``."""
    from torch.fx.passes.shape_prop import ShapeProp

    graph = _LeafTracer().trace(model)
    module = fx.GraphModule(model, graph)
    with torch.no_grad():
        ShapeProp(module).propagate(*example_args)
    for node in module.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            node.meta["shape"] = tuple(meta.shape)
    return module.graph


class _GraphRecorder(TorchFunctionMode):
    """Records a ``torch.fx.Graph`` from one real forward: torch functions and Tensor methods
    called outside leaf modules become ``call_function`` nodes, leaf modules ``call_module``
    nodes (forward hooks), tensors not produced inside (inputs, parameters read directly) become
    placeholders / get_attr nodes. Works through Python control flow and decorated forwards,
    which symbolic tracing cannot."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self.root = root
        self.graph = fx.Graph()
        self.nodes: dict[int, fx.Node] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while recording
        self.depth = 0
        self.pending: list[tuple] = []
        self.names = {id(m): n for n, m in root.named_modules()}
        self.params = {id(t): n for n, t in root.named_parameters(remove_duplicate=False)}
        self.params.update({id(t): n for n, t in root.named_buffers(remove_duplicate=False)})
        self.externals = 0

    def _bind(self, tensor: torch.Tensor, node: fx.Node) -> None:
        self.nodes[id(tensor)] = node
        self.alive.append(tensor)
        node.meta["shape"] = tuple(tensor.shape)

    def placeholder(self, tensor: torch.Tensor, name: str) -> None:
        self._bind(tensor, self.graph.placeholder(name))

    def _arg(self, value):
        if isinstance(value, torch.Tensor):
            node = self.nodes.get(id(value))
            if node is None:
                name = self.params.get(id(value))
                if name is not None:
                    node = self.graph.get_attr(name)
                else:
                    self.externals += 1
                    node = self.graph.get_attr(f"<external {self.externals}>")
                self._bind(value, node)
            return node
        if isinstance(value, (list, tuple)):
            mapped = [self._arg(v) for v in value]
            return mapped if isinstance(value, list) else tuple(mapped)
        if isinstance(value, dict):
            return {k: self._arg(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, slice)):
            return value
        return repr(value)

    def _bind_output(self, result, node: fx.Node) -> None:
        if isinstance(result, torch.Tensor):
            self._bind(result, node)
        elif isinstance(result, (tuple, list)):
            for i, item in enumerate(result):
                if isinstance(item, torch.Tensor):
                    self._bind(item, self.graph.call_function(operator.getitem, (node, i)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth > 0:
            return func(*args, **kwargs)
        mapped = (self._arg(args), self._arg(kwargs))
        result = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(result)):
            node = self.graph.call_function(func, mapped[0], mapped[1])
            self._bind_output(result, node)
        return result

    def _pre_hook(self, module, args, kwargs):
        if self.depth == 0:
            self.pending.append((self._arg(args), self._arg(kwargs)))
        self.depth += 1

    def _post_hook(self, module, args, kwargs, output):
        self.depth -= 1
        if self.depth == 0:
            margs, mkwargs = self.pending.pop()
            node = self.graph.call_module(self.names[id(module)], margs, mkwargs)
            self._bind_output(output, node)

    @contextlib.contextmanager
    def hooks(self):
        handles = []
        for name, module in self.root.named_modules():
            if name and _is_leaf_module(module):
                handles.append(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
                handles.append(module.register_forward_hook(self._post_hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def record_graph(module: nn.Module, args: tuple = (), kwargs: Mapping | None = None) -> fx.Graph:
    """A ``torch.fx.Graph`` recorded from ``module(*args, **kwargs)`` (see :class:`_GraphRecorder`)."""
    kwargs = dict(kwargs or {})
    recorder = _GraphRecorder(module)
    for i, tensor in enumerate(t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
        if id(tensor) not in recorder.nodes:
            recorder.placeholder(tensor, f"input_{i}")
    with torch.no_grad(), recorder.hooks(), recorder:
        output = module(*args, **kwargs)
    recorder.graph.output(recorder._arg(pytree.tree_leaves(output)))
    return recorder.graph


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


class _ChannelAnalysis:
    """Channel spaces of every value of an fx graph (see the module docstring)."""

    def __init__(self, graph: fx.Graph, modules: Mapping[str, nn.Module], where: str):
        self.graph = graph
        self.modules = modules
        self.where = where
        self.spaces = _Spaces()
        self.info: dict[fx.Node, object] = {}  # node -> (space, cdim) | _TAINT | None
        self.producer: dict[str, int] = {}
        self.consumer: dict[str, int] = {}
        self.through: dict[str, int] = {}

    # -- helpers
    def _spaced(self, node) -> tuple[int, int] | None:
        value = self.info.get(node) if isinstance(node, fx.Node) else None
        return value if isinstance(value, tuple) else None

    def _block_inputs(self, node: fx.Node, reason: str):
        touched = False
        for arg in _node_args(node):
            value = self.info.get(arg)
            if isinstance(value, tuple):
                self.spaces.block(value[0], reason)
                touched = True
            elif value is _TAINT:
                touched = True
        if not touched:
            return None
        if "shape" in node.meta:
            return (self.spaces.new(reason), -1)
        return _TAINT

    def _fresh(self, reason: str):
        return (self.spaces.new(reason), -1)

    def _module_role(self, table: dict[str, int], name: str, space: int) -> int:
        if name in table:
            return self.spaces.union(table[name], space)
        table[name] = space
        return space

    # -- rules
    def run(self) -> "_ChannelAnalysis":
        for node in self.graph.nodes:
            self.info[node] = self._visit(node)
        return self

    def _visit(self, node: fx.Node):
        if node.op == "placeholder":
            return self._fresh(f"it carries an input of {self.where}")
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for arg in _node_args(node):
                value = self.info.get(arg)
                if isinstance(value, tuple):
                    self.spaces.block(value[0], f"it reaches the output of {self.where}")
            return None
        if node.op == "call_module":
            return self._visit_module(node, self.modules[node.target])
        name = _op_name(node.target)
        if node.target is operator.getitem and self.info.get(node.args[0]) is _TAINT:
            return self._fresh(f"it passes through {_op_name(node.args[0].target)} in {self.where}")
        if name in _SHAPE_ONLY:
            return None
        if not any(isinstance(self.info.get(a), tuple) or self.info.get(a) is _TAINT for a in _node_args(node)):
            return None  # constants only
        if name in _UNARY:
            first = node.args[0] if node.args else None
            value = self._spaced(first)
            others = [a for a in _node_args(node) if a is not first]
            if value is not None and (name in ("to", "type_as") or not others):
                return value
            if value is not None:
                return self._binary(node, name)
        if name in _BINARY:
            return self._binary(node, name)
        if name in _RESHAPE:
            return self._reshape(node, node.args[0])
        if name in _REDUCE:
            return self._reduce(node)
        if "pool" in name:
            return self._pool(node, node.args[0])
        return self._block_inputs(node, f"it is read by {name} in {self.where}")

    def _visit_module(self, node: fx.Node, module: nn.Module):
        name = node.target
        source = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        value = self._spaced(source)
        shape = source.meta.get("shape") if isinstance(source, fx.Node) else None
        kind = channel_kind(module)
        if kind in ("linear", "conv1d", "conv2d"):
            wanted = -1 if kind != "conv2d" else -3
            if value is not None:
                if value[1] == wanted and shape is not None and len(shape) >= -wanted:
                    self._module_role(self.consumer, name, value[0])
                else:
                    self.spaces.block(value[0], f"{name} reads it along another dimension")
            if name not in self.producer:
                self.producer[name] = self.spaces.new()
            return (self.producer[name], wanted)
        if kind == "depthwise":
            if value is not None and value[1] == -3:
                self._module_role(self.through, name, value[0])
                return value
            return self._block_inputs(node, f"it is read by {name} along another dimension") or self._fresh(
                f"{name} has no channel-tracked input")
        if kind == "batchnorm":
            if value is not None and shape is not None and len(shape) + value[1] == 1:
                self._module_role(self.through, name, value[0])
                return value
            return self._block_inputs(node, f"it is read by {name} along another dimension")
        if isinstance(module, _ACTIVATION_MODULES):
            return value if value is not None else self._block_inputs(node, f"{name}")
        if isinstance(module, (nn.Flatten, nn.Unflatten)):
            return self._reshape(node, source)
        if "Pool" in type(module).__name__:
            return self._pool(node, source)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            reason = f"it is read by the grouped convolution {name}"
            self._block_inputs(node, reason)
            return self._fresh(f"it is the output of the grouped convolution {name}")
        return self._block_inputs(node, f"it is read by {type(module).__name__} {name} in {self.where}")

    def _binary(self, node: fx.Node, name: str):
        spaced, plain = [], []
        for arg in _node_args(node):
            value = self.info.get(arg)
            if isinstance(value, tuple):
                spaced.append(value)
            elif value is _TAINT:
                return self._block_inputs(node, f"{name} in {self.where}")
            elif "shape" in arg.meta:
                plain.append(arg.meta["shape"])
        if not spaced:
            return None
        cdims = {c for _, c in spaced}
        root = spaced[0][0]
        for space, _ in spaced[1:]:
            root = self.spaces.union(root, space)
        if len(cdims) != 1:
            self.spaces.block(root, f"{name} in {self.where} combines it with channels of another dimension")
            return (root, spaced[0][1])
        cdim = cdims.pop()
        for shape in plain:
            if len(shape) >= -cdim and shape[cdim] != 1:
                self.spaces.block(root, f"{name} in {self.where} combines it with a tensor holding channels "
                                        "(a constant, parameter or input)")
        return (root, cdim)

    def _reshape(self, node: fx.Node, source):
        value = self._spaced(source)
        if value is None:
            return self._block_inputs(node, f"reshape in {self.where}")
        before, after = source.meta.get("shape"), node.meta.get("shape")
        if before is None or after is None:
            self.spaces.block(value[0], f"a reshape of unknown shape in {self.where}")
            return self._fresh("reshape")
        position = len(before) + value[1]
        leading = math.prod(before[:position])
        for q in range(len(after)):
            if math.prod(after[:q]) == leading and after[q] == before[position]:
                return (value[0], q - len(after))
        self.spaces.block(value[0], f"a reshape {before} -> {after} in {self.where} mixes its channels")
        return self._fresh("reshape")

    def _reduce(self, node: fx.Node):
        source = node.args[0]
        value = self._spaced(source)
        shape = source.meta.get("shape") if isinstance(source, fx.Node) else None
        if value is None or shape is None:
            return self._block_inputs(node, f"a reduction in {self.where}")
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        position = len(shape) + value[1]
        if dims is None or not isinstance(dims, (int, tuple, list)):
            self.spaces.block(value[0], f"a reduction over all dimensions in {self.where}")
            return self._fresh("reduction")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(shape) for d in dims]
        if position in dims:
            self.spaces.block(value[0], f"a reduction over its channels in {self.where} (e.g. a normalisation)")
            return self._fresh("reduction")
        new_position = position if keepdim else position - sum(1 for d in dims if d < position)
        out_ndim = len(shape) if keepdim else len(shape) - len(set(dims))
        return (value[0], new_position - out_ndim)

    def _pool(self, node: fx.Node, source):
        value = self._spaced(source)
        before, after = (source.meta.get("shape") if isinstance(source, fx.Node) else None), node.meta.get("shape")
        if value is None or before is None or after is None:
            return self._block_inputs(node, f"pooling in {self.where}")
        position = len(before) + value[1]
        batched = len(before) == 4
        if position == (1 if batched else 0) and len(after) == len(before) and after[position] == before[position]:
            return value
        self.spaces.block(value[0], f"pooling in {self.where} along its channels")
        return self._fresh("pool")

    # -- result
    def groups(self, prefix: str = "") -> tuple[list[ChannelGroup], dict[str, str]]:
        """The unblocked channel groups, and for every module whose output channels cannot be
        pruned, why not."""
        by_root: dict[int, dict[str, list[str]]] = {}
        for role, table in (("out", self.producer), ("in", self.consumer), ("through", self.through)):
            for name, space in table.items():
                by_root.setdefault(self.spaces.find(space), {"out": [], "in": [], "through": []})[role].append(name)
        groups, blocked = [], {}
        full = (lambda n: f"{prefix}{n}") if prefix else (lambda n: n)
        for root, roles in by_root.items():
            reason = self.spaces.blocked(root)
            if not roles["out"]:
                continue
            members = [ChannelMember(full(n), self.modules[n], role) for role in ("out", "in", "through")
                       for n in roles[role]]
            if reason is None:
                sizes = {m.axis_size() for m in members}
                if len(sizes) != 1:
                    reason = f"its modules disagree on the channel count ({sorted(sizes)})"
            if reason is not None:
                for n in roles["out"]:
                    blocked[full(n)] = reason
                continue
            units = members[0].axis_size()
            groups.append(ChannelGroup(full(roles["out"][0]), "channels", units, members))
        return groups, blocked


def find_channel_groups(model: nn.Module, example_inputs=None, *, graph: fx.Graph | None = None,
                        prefix: str = "") -> tuple[list[ChannelGroup], dict[str, str]]:
    """Coupled channel groups of ``model`` from a graph of its forward, and, for every Linear /
    Conv2d whose output channels cannot be pruned, the reason (``{name: reason}``).

    The graph is ``graph`` if given; else a ``torch.fx`` symbolic trace with shapes propagated from
    ``example_inputs`` (a tensor or a tuple of positional arguments); if symbolic tracing fails,
    or ``example_inputs`` is a dict of keyword arguments, a graph recorded from one forward."""
    modules = dict(model.named_modules())
    where = type(model).__name__
    if graph is None:
        if example_inputs is None:
            raise ValueError("example_inputs: expected a tensor, a tuple of positional arguments or a dict of "
                             f"keyword arguments for {where}.forward (used to trace it), but got None")
        if isinstance(example_inputs, torch.Tensor):
            args, kwargs = (example_inputs,), {}
        elif isinstance(example_inputs, Mapping):
            args, kwargs = (), dict(example_inputs)
        else:
            args, kwargs = tuple(example_inputs), {}
        graph = None
        if not kwargs:
            try:
                graph = trace_graph(model, args)
            except Exception as error:  # control flow on tensors, unsupported Python: record instead
                logger.info("torch.fx symbolic tracing of %s failed (%s: %s); recording a forward instead",
                            where, type(error).__name__, error)
        if graph is None:
            graph = record_graph(model, args, kwargs)
    analysis = _ChannelAnalysis(graph, modules, where).run()
    groups, blocked = analysis.groups(prefix)
    return _drop_tied(model, groups, blocked)


def _drop_tied(model: nn.Module, groups: list[ChannelGroup], blocked: dict[str, str]):
    """Drops groups with a member whose weight is shared with another module of ``model`` (tied
    weights): cutting one would cut, or untie, the other."""
    users: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            users[id(parameter)] = users.get(id(parameter), 0) + 1
    kept = []
    for group in groups:
        shared = [m.name for m in group.members if users.get(id(m.module.weight), 0) > 1]
        if shared:
            for m in group.members:
                if m.role == "out":
                    blocked[m.name] = f"its weight is shared with another module ({shared[0]})"
            continue
        kept.append(group)
    return kept, blocked


# ============================================================================ transformers

def _config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _attention_layout(config) -> dict | None:
    heads = _config_value(config, "num_attention_heads", "n_head", "num_heads")
    hidden = _config_value(config, "hidden_size", "n_embd", "d_model")
    if not isinstance(heads, int) or not isinstance(hidden, int):
        return None
    kv = _config_value(config, "num_key_value_heads", default=heads)
    head_dim = _config_value(config, "head_dim", default=hidden // heads)
    if not isinstance(kv, int) or kv <= 0 or heads % kv:
        return None
    return {"heads": heads, "kv_heads": kv, "head_dim": int(head_dim), "hidden": hidden}


def _io(module: nn.Module) -> tuple[int, int]:
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


def _update_attention_attributes(attention: nn.Module, old: dict, new_heads: int, new_kv: int) -> None:
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


# ============================================================================ structure of a model

@dataclass
class _Structure:
    groups: list[ChannelGroup]
    blocked: dict[str, str]
    transformer: bool
    blocks_name: str | None = None
    layout: dict | None = None
    heads_missing: list[str] = field(default_factory=list)


def _hf_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    return config


def _dummy_hf_input(model: nn.Module) -> dict:
    vocab = int(_config_value(_hf_config(model), "vocab_size", default=2))
    ids = (torch.arange(8) % max(vocab, 1)).unsqueeze(0).to(model_device(model))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def find_structure(model: nn.Module, example_inputs=None, *, blocks: str | None = None,
                   head_unit: str = "kv_group") -> _Structure:
    """All prunable groups of ``model``: for a Hugging Face transformer (a config with attention
    heads and a block list) per block its MLP channel groups (recorded from the block's forward)
    and its attention heads; otherwise the channel groups of the whole model."""
    config = _hf_config(model)
    layout = _attention_layout(config) if config is not None else None
    found = find_blocks(model, blocks) if layout is not None else None
    if found is None:
        groups, blocked = find_channel_groups(model, example_inputs)
        return _Structure(groups, blocked, transformer=False)
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
        analysis = _ChannelAnalysis(graph, dict(block.named_modules()), f"{blocks_name}.{index}").run()
        block_groups, block_blocked = analysis.groups(prefix)
        block_groups, block_blocked = _drop_tied(model, block_groups, block_blocked)
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
    return _Structure(groups, blocked, True, blocks_name, layout, missing)


# ============================================================================ the pruner

@dataclass
class StructuredReport:
    """What :func:`prune_structured` did; JSON-serialisable through :meth:`to_dict` / :meth:`to_json`.

    ``groups``: one entry per pruned group: name, kind ("mlp" | "heads" | "channels"), member
    modules ("name:role"), units before and after, channels per unit (head_dim for heads).
    ``config_updates``: Hugging Face config attributes changed, {name: [old, new]};
    ``config_reloadable``: whether a model built from the updated config has exactly the pruned
    model's parameter names and shapes (so save_pretrained + from_pretrained round-trips; None
    for models without a config). ``bias_compensated``: consumers whose bias received FLAP's
    compensation (``biases_created``: those that had none)."""

    importance: str
    ratio: dict
    round_to: int | None
    params_before: int
    params_after: int
    groups: list[dict] = field(default_factory=list)
    config_updates: dict = field(default_factory=dict)
    config_reloadable: bool | None = None
    bias_compensated: list[str] = field(default_factory=list)
    biases_created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def params_removed(self) -> int:
        return self.params_before - self.params_after

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["params_removed"] = self.params_removed
        return data

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        lines = [f"structured pruning ({self.importance}, ratio {self.ratio}, round_to {self.round_to}): "
                 f"{self.params_before:,} -> {self.params_after:,} parameters "
                 f"(-{self.params_removed:,}, {self.params_removed / max(self.params_before, 1):.1%})"]
        for group in self.groups:
            lines.append(f"  {group['kind']:<8} {group['name']}: {group['units_before']} -> {group['units_after']}")
        if self.config_updates:
            lines.append(f"  config: {self.config_updates} (reloadable: {self.config_reloadable})")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _validate_ratio(ratio, targets: tuple[str, ...]) -> dict[str, float]:
    if isinstance(ratio, Mapping):
        unknown = [k for k in ratio if k not in targets]
        if unknown:
            raise ValueError(f"ratio: expected keys among the targets {targets}, but got {unknown[0]!r}")
        ratios = {t: ratio.get(t, 0.0) for t in targets}
    else:
        ratios = {t: ratio for t in targets}
    for target, value in ratios.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"ratio: expected a fraction in [0, 1) for {target!r}, but got {value!r}")
        if not 0 <= value < 1:
            raise ValueError(f"ratio: expected a fraction in [0, 1) for {target!r} (1 would remove every "
                             f"channel), but got {value!r}")
    return {t: float(v) for t, v in ratios.items()}


def _default_loss(model: nn.Module, batch: CalibrationBatch) -> torch.Tensor:
    return language_model_loss(model, batch, no_loss_message=(
        f"loss_fn: expected a callable(model, batch) -> scalar loss for taylor importance, because "
        f"{type(model).__name__} returned no loss for labels=input_ids; got None"))


def _member_matrix(member: ChannelMember) -> torch.Tensor:
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


def _gradients(model: nn.Module, members: list[ChannelMember], calib: list, loss_fn) -> dict[str, torch.Tensor]:
    """Sum over the calibration batches of every member's weight gradient (matrix layout)."""
    modules = {m.name: m for m in members if m.kind in ("linear", "conv1d", "conv2d", "depthwise")}
    weights = {name: m.module.weight for name, m in modules.items()}
    totals = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}

    def accumulate(name: str, grad: torch.Tensor) -> None:
        totals[name] += grad

    accumulate_weight_gradients(model, weights, enumerate(calib), loss_fn or _default_loss, accumulate,
                                loss_name="loss_fn")
    result = {}
    for name, m in modules.items():
        grad = totals[name]
        result[name] = grad.t() if m.kind == "conv1d" else grad.reshape(grad.shape[0], -1)
    return result


def _score_group(group: ChannelGroup, importance: str, stats: Mapping[str, LayerInputStats],
                 gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
    units = torch.arange(group.units)
    views = []
    for member in group.members:
        if member.kind not in ("linear", "conv1d", "conv2d", "depthwise"):
            continue  # BatchNorm: sliced along, not scored
        role = "in" if member.role == "in" else "out"
        stat = stats.get(member.name) if member.kind != "depthwise" else None
        views.append(MemberWeights(
            role=role, matrix=_member_matrix(member), index=_member_lines(member, units),
            gradient=gradients.get(member.name),
            input_norms=stat.input_norms if stat is not None else None,
            input_var=stat.input_var if (stat is not None and role == "in") else None,
            name=f"{member.name}:{member.role}"))
    return unit_scores(views, group.units, importance)


def _apply_group(group: ChannelGroup, keep_units: torch.Tensor, stats: Mapping[str, LayerInputStats],
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
            columns = _expand_columns(member, sorted(channels))
            delta = bias_compensation(_member_matrix(member).float(), columns, stat.input_mean)
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


def _expand_columns(member: ChannelMember, channels: list[int]) -> torch.Tensor:
    channels = torch.tensor(channels, dtype=torch.long)
    area = _kernel_area(member)
    if area == 1:
        return channels
    return (channels[:, None] * area + torch.arange(area)).flatten()


def _select_per_kv_head(group: ChannelGroup, scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The best query heads within every key/value head's group, the same number in each."""
    kv = group.attention["kv_heads"]
    size = group.units // kv
    per_kv = keep // kv
    return torch.cat([select_units(scores[j * size:(j + 1) * size], per_kv) + j * size for j in range(kv)])


def _matches(name: str, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + "."):
            return pattern
    return None


def _select_groups(structure: _Structure, targets: tuple[str, ...], modules, ignore) -> list[ChannelGroup]:
    groups = [g for g in structure.groups if g.kind in targets]
    if ignore:
        groups = [g for g in groups if not any(_matches(m.name, ignore) for m in g.members)
                  and not (g.attention and _matches(g.attention["module"], ignore))]
    if modules is None:
        return groups
    if isinstance(modules, str):
        modules = [modules]
    chosen = []
    for pattern in modules:
        hits = [g for g in groups if any(_matches(m.name, [pattern]) for m in g.members if m.role != "in"
                                         or g.kind == "heads")
                or (g.attention and _matches(g.attention["module"], [pattern]))]
        if not hits:
            reason = next((r for n, r in structure.blocked.items() if _matches(n, [pattern])), None)
            why = (f"its output channels cannot be pruned: {reason}" if reason is not None
                   else "it is not a member of any prunable group for these targets")
            raise ValueError(f"modules: expected names of modules in prunable channel groups or attention "
                             f"modules (targets {targets}), but {pattern!r} is not prunable: {why}")
        chosen.extend(g for g in hits if g not in chosen)
    return chosen


def prune_structured(model: nn.Module, ratio: float | Mapping[str, float] = 0.25, *,
                     importance: str = "magnitude", targets: str | Sequence[str] | None = None,
                     round_to: int | None = None, calib: Sequence | None = None, example_inputs=None,
                     loss_fn: Callable | None = None, bias_compensation: bool | None = None,
                     modules: Sequence[str] | str | None = None, ignore: Sequence[str] = (),
                     head_unit: str = "kv_group", blocks: str | None = None, device=None,
                     progress: bool = False) -> StructuredReport:
    """Structured pruning that physically shrinks ``model`` in place; returns a :class:`StructuredReport`.

    - ``ratio``: fraction of each group's units to remove, in [0, 1); or a dict per target, e.g.
      ``{"mlp": 0.25, "heads": 0.125}``. Each group keeps ``kept_units(units, ratio, round_to)``
      units (units * (1 - ratio) rounded half up); 0 changes nothing.
    - ``importance``: "magnitude" (L2 of the coupled weights, no data), "taylor" (|w * grad| over
      the group, gradients of ``loss_fn`` on ``calib``), "wanda" (|W| * ||X|| over the group),
      "flap" (input variance times squared weight-column norm of the consumers, with bias
      compensation). "taylor", "wanda" and "flap" need ``calib``.
    - ``targets``: which groups: "mlp" (a transformer block's MLP intermediate channels) and
      "heads" (attention heads; a key/value head and its query heads go together, so a grouped-
      query model keeps num_attention_heads / num_key_value_heads) for Hugging Face transformers
      (default both); "channels" (every coupled channel group, e.g. conv output channels with
      their BatchNorm, residual adds and consumers) for other models (the default there).
    - ``head_unit``: what a head unit is. "kv_group" (default): a key/value head together with the
      query heads that share it (their q, k, v rows and o columns), so the ratio
      num_attention_heads / num_key_value_heads is kept; "query_head" (grouped-query models
      only): single query heads, the same number removed under every key/value head, the
      key/value heads all kept (finer steps when there are few key/value heads).
    - ``round_to``: keep channel counts of "mlp" and "channels" groups multiples of this (8, 16,
      64, ...); heads are counted in heads and not rounded.
    - ``calib``: calibration inputs (tensors, dicts of keyword arguments, tuples) for the
      data-driven importances, as in :func:`prunekit.prune`. Transformers are calibrated block by
      block (:func:`prunekit.calibrate.pipeline.walk_blocks`), each block seeing the pruned
      outputs of the previous ones; other models with one-shot whole-model forwards.
    - ``example_inputs``: one input used to trace the model (required for models without a
      Hugging Face config when ``calib`` is not given; transformers get a dummy input_ids).
    - ``loss_fn``: callable(model, batch) -> scalar loss for taylor (default: the model's loss
      with labels = input_ids); ``batch`` has ``.args`` and ``.kwargs``.
    - ``bias_compensation``: add W[:, removed] @ mean(X[removed]) to every consumer's bias
      (creating one if missing). Default: True for "flap", False otherwise; True needs ``calib``.
    - ``modules``: prune only the groups whose channels these modules produce (a Linear/Conv2d
      by its output channels, a BatchNorm or depthwise conv by its channels) and the heads of
      these attention modules or their projections (names or fnmatch patterns); a name that is
      not prunable raises ValueError saying why. ``ignore``: patterns of modules whose groups
      (as producer, consumer or pass-through) are left alone.
    - ``blocks``: the name of a transformer's block list when it is not found automatically;
      ``device``: where calibration runs block by block.

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
    before anything is changed: unknown importance or targets, ratios outside [0, 1) or removing
    every unit of a group, round_to larger than a group, missing calib, modules that are not
    prunable.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()  # tracing and calibration must not update BatchNorm statistics or drop out
    try:
        return _prune_structured(model, ratio, importance, targets, round_to, calib, example_inputs, loss_fn,
                                 bias_compensation, modules, ignore, head_unit, blocks, device, progress)
    finally:
        for module, training in modes.items():
            module.training = training


def _prune_structured(model, ratio, importance, targets, round_to, calib, example_inputs, loss_fn,
                      bias_compensation, modules, ignore, head_unit, blocks, device, progress) -> StructuredReport:
    started = time.perf_counter()
    if importance not in IMPORTANCES:
        raise ValueError(f"importance: expected one of {IMPORTANCES}, but got {importance!r}")
    if head_unit not in HEAD_UNITS:
        raise ValueError(f"head_unit: expected one of {HEAD_UNITS}, but got {head_unit!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to: expected None or a positive int (e.g. 8, 16, 64), but got {round_to!r}")
    if bias_compensation is None:
        bias_compensation = importance == "flap"
    needs_data = importance in ("taylor", "wanda", "flap") or bias_compensation
    if calib is not None:
        calib = list(calib)
        for index, item in enumerate(calib):
            CalibrationBatch.from_item(item, index)
    if needs_data and not calib:
        what = f"importance={importance!r}" if importance != "magnitude" else "bias_compensation=True"
        raise ValueError(f"calib: expected a non-empty list of calibration inputs for {what}, but got "
                         f"{'an empty list' if calib is not None else 'None'}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn: expected a callable(model, batch) -> scalar loss, but got {type(loss_fn).__name__}")
    if example_inputs is None and calib:
        example_inputs = calib[0]

    config = _hf_config(model)
    is_transformer = config is not None and _attention_layout(config) is not None
    if not is_transformer and example_inputs is None:
        raise ValueError(f"example_inputs: expected a model input (tensor, tuple or dict) to trace "
                         f"{type(model).__name__}, or calib; got None")
    structure = find_structure(model, example_inputs, blocks=blocks, head_unit=head_unit)
    available = ("mlp", "heads") if structure.transformer else ("channels",)
    if targets is None:
        targets = available
    elif isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    for target in targets:
        if target not in available:
            raise ValueError(f"targets: expected some of {available} for {type(model).__name__}, but got {target!r}")
    if not targets:
        raise ValueError(f"targets: expected at least one of {available}, but got an empty sequence")
    ratios = _validate_ratio(ratio, targets)
    if head_unit == "query_head" and "heads" in targets and structure.layout["heads"] == structure.layout["kv_heads"]:
        raise ValueError(f"head_unit: expected 'kv_group' for {type(model).__name__}, whose attention has as many "
                         f"key/value heads as query heads ({structure.layout['heads']}; 'query_head' needs grouped-"
                         "query attention), but got 'query_head'")
    if "heads" in targets and structure.heads_missing and ratios["heads"] > 0:
        raise ValueError(f"targets: 'heads' needs attention modules with q/k/v/o projections matching the config "
                         f"(layout {structure.layout}), but none was found in {structure.heads_missing[0]}")
    groups = _select_groups(structure, targets, modules, ignore)
    if not groups and modules is None:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(structure.blocked.items())[:3])
        raise ValueError(f"model: expected {type(model).__name__} to have prunable channel groups for targets "
                         f"{targets}, but found none" + (f" ({reasons})" if reasons else ""))

    # the plan: units kept per group (all checks before any change)
    plan: list[tuple[ChannelGroup, int]] = []
    for group in groups:
        group_ratio = ratios[group.kind]
        rounding = round_to if group.kind != "heads" else None
        if rounding is not None and group_ratio > 0 and rounding > group.units:
            raise ValueError(f"round_to: expected at most the {group.units} channels of group {group.name}, "
                             f"but got {rounding}")
        if group.kind == "heads" and group.attention["unit"] == "query_head":
            group_size = group.attention["heads"] // group.attention["kv_heads"]
            per_kv = kept_units(group_size, group_ratio)
            if per_kv < 1:
                raise ValueError(f"ratio: expected a ratio that keeps at least one of the {group_size} query heads "
                                 f"of every key/value head of {group.name} (head_unit='query_head'), but got "
                                 f"{group_ratio} which removes all of them")
            plan.append((group, per_kv * group.attention["kv_heads"]))
            continue
        keep = kept_units(group.units, group_ratio, rounding)
        if keep < 1:
            what = "key/value heads" if group.kind == "heads" else "channels"
            limit = 1 - 1 / group.units if rounding is None else None
            raise ValueError(f"ratio: expected a ratio that keeps at least one of the {group.units} {what} of "
                             f"{group.name}" + (f" (below about {limit:.3f})" if limit is not None else "")
                             + f", but got {group_ratio} which removes all of them")
        plan.append((group, keep))

    report = StructuredReport(importance, ratios, round_to, count_parameters(model), 0)
    gradients = {}
    if importance == "taylor":
        gradients = _gradients(model, [m for g, _ in plan for m in g.members], calib, loss_fn)

    def prune_groups(items, stats):
        # every group of ``items`` is scored on the weights as they are before any of them is cut
        # (a conv can be a consumer in one group and a producer in another), then all are cut
        chosen = []
        for group, keep in items:
            if keep == group.units:
                chosen.append(torch.arange(group.units))
            elif group.kind == "heads" and group.attention["unit"] == "query_head":
                chosen.append(_select_per_kv_head(group, _score_group(group, importance, stats, gradients), keep))
            else:
                chosen.append(select_units(_score_group(group, importance, stats, gradients), keep))
        for (group, keep), units in zip(items, chosen):
            _apply_group(group, units, stats, bias_compensation, report)
            if group.kind == "heads" and keep != group.units:
                attention = model.get_submodule(group.attention["module"])
                _update_attention_attributes(attention, group.attention, *heads_after(group, keep))
            report.groups.append({"name": group.name, "kind": group.kind, "members": group.member_names(),
                                  "units_before": group.units, "units_after": keep,
                                  "channels_per_unit": group.channels_per_unit,
                                  "kept_units": units.tolist()})

    active = [(g, k) for g, k in plan if k != g.units]
    need_stats = importance in ("wanda", "flap") or bias_compensation
    if not need_stats:
        prune_groups(plan, {})
    else:
        layers = {}
        for group, _ in active:
            for member in group.members:
                if member.kind in ("linear", "conv1d", "conv2d"):
                    layers[member.name] = PrunableLayer(member.name, member.module)
        by_block: dict[int | None, list] = {}
        for group, keep in plan:
            by_block.setdefault(group.block, []).append((group, keep))
        sequential = structure.transformer
        collected: dict[str, LayerInputStats] = {}
        done = set()
        if layers:
            for step in walk_blocks(model, calib, layers, sequential=sequential, device=device,
                                    blocks_path=structure.blocks_name if structure.transformer else None,
                                    progress=progress, description="prunekit structured"):
                collected.update(step.stats)
                if sequential and step.index >= 0:
                    prune_groups(by_block.get(step.index, []), step.stats)
                    done.add(step.index)
        rest = [item for block, items in by_block.items() if block not in done for item in items]
        prune_groups(rest, collected)

    if structure.transformer:
        _update_hf_config(model, config, plan, structure, report)
    report.params_after = count_parameters(model)
    report.seconds = time.perf_counter() - started
    for message in report.warnings:
        warnings.warn(message, stacklevel=3)  # at the caller of prune_structured
    return report


# ============================================================================ Hugging Face configs

_MLP_CONFIG_ATTRIBUTES = ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff")


def _update_hf_config(model: nn.Module, config, plan, structure: _Structure, report: StructuredReport) -> None:
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
