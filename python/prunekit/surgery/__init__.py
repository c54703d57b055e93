"""Model surgery: swap pruned modules for sparse ones (:func:`sparsify_`)."""

from .sparsify import SparsifySummary, model_bytes, sparsify_
from .structured import StructuredReport, find_channel_groups, prune_structured  # noqa: F401  (structured)

__all__ = ["SparsifySummary", "model_bytes", "sparsify_"]
