"""Structured pruning that physically shrinks a model: whole channels, MLP intermediate features
and attention heads are removed, so the pruned modules are smaller dense modules.

The layers, as in Torch-Pruning, one module each:

- :mod:`.channels`: channel surgery on one module (:func:`prune_output_channels`,
  :func:`prune_input_channels`, :func:`prune_through_channels`, :func:`add_to_bias`).
- :mod:`.graph`: a ``torch.fx`` graph of the forward, traced or recorded from one real forward.
- :mod:`.channel_groups`: the dependency analysis on that graph: which channels must go together
  (:func:`find_channel_groups`, :class:`ChannelGroup`).
- :mod:`.attention`: attention heads (grouped-query included) as groups, from a Hugging Face config.
- :mod:`.structure`: all prunable groups of a model (:func:`find_structure`).
- :mod:`.config`, :mod:`.pruner`, :mod:`.scoring`, :mod:`.report`: :func:`prune_structured` with a
  :class:`StructuredConfig`; the importances themselves are in :mod:`prunekit.solvers.structured`.
- :mod:`.hf_config`: the Hugging Face config updates after pruning.
"""

from ...solvers.structured import Importance, register_importance
from .attention import HEAD_UNITS, find_attention_group
from .channel_groups import ChannelGroup, ChannelMember, find_channel_groups
from .channels import add_to_bias, channel_kind, prune_input_channels, prune_output_channels, prune_through_channels
from .config import StructuredConfig
from .pruner import prune_structured
from .graph import record_graph, trace_graph
from .report import StructuredReport, count_parameters
from .structure import find_structure

__all__ = ["prune_structured", "StructuredConfig", "StructuredReport", "Importance", "register_importance",
           "ChannelGroup", "ChannelMember", "find_channel_groups", "find_structure", "find_attention_group",
           "prune_output_channels", "prune_input_channels", "prune_through_channels", "add_to_bias",
           "channel_kind", "count_parameters", "trace_graph", "record_graph", "HEAD_UNITS"]
