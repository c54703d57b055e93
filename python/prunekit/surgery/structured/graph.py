"""Graph capture: a ``torch.fx.Graph`` of a model's forward, for the channel-group analysis.

For a plain model (CNNs) the graph comes from ``torch.fx`` symbolic tracing plus shape
propagation on example inputs (:func:`trace_graph`). Where symbolic tracing fails (Python control
flow on tensors, decorated forwards such as those of Hugging Face blocks) the same kind of graph is
*recorded* from one real forward under a ``TorchFunctionMode`` (:func:`record_graph`): every torch
function called outside leaf modules becomes a node, leaf modules become ``call_module`` nodes.
Every node carries its output shape in ``node.meta["shape"]``.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Mapping

import torch
import torch.fx as fx
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .channels import is_hf_conv1d

__all__ = ["trace_graph", "record_graph"]


def _is_leaf_module(module: nn.Module) -> bool:
    """Modules that the graph keeps as single nodes: torch.nn modules without submodules (as
    torch.fx does) and transformers' Conv1D."""
    if is_hf_conv1d(module):
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

