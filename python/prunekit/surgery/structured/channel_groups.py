"""Channel-group analysis: which channels of a model must be removed together.

One analysis runs on a graph of the forward (:mod:`.graph`, traced or recorded): every tensor
carries a *channel space* (union-find); Linear/Conv2d outputs open a new space (their output
channels), their inputs consume one (their input channels); BatchNorm, depthwise convolutions,
activations, dropout, pooling and channel-preserving reshapes pass the space through; elementwise
add/mul of two spaces merges them (a residual add couples the channels of every conv feeding it);
everything else (the model's inputs and outputs, normalisations over the channels, reductions over
them, indexing, concatenation, transposes, attention arithmetic) *blocks* the space. Every
unblocked space is a :class:`ChannelGroup`: producers whose output rows go, consumers whose input
columns go, pass-through modules sliced alongside.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from .channels import channel_kind
from .graph import record_graph, trace_graph

logger = logging.getLogger(__name__)

__all__ = ["ChannelMember", "ChannelGroup", "ChannelAnalysis", "find_channel_groups", "drop_tied_groups"]


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


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


class ChannelAnalysis:
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
    def run(self) -> "ChannelAnalysis":
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
    analysis = ChannelAnalysis(graph, modules, where).run()
    groups, blocked = analysis.groups(prefix)
    return drop_tied_groups(model, groups, blocked)


def drop_tied_groups(model: nn.Module, groups: list[ChannelGroup], blocked: dict[str, str]):
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

