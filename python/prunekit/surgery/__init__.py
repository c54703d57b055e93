"""Model surgery: swap pruned modules for sparse ones (:func:`sparsify_`), remove pruned
structure (:mod:`prunekit.surgery.structured`)."""

from . import sparsify as _sparsify_module
from .sparsify import SparsifyConfig, SparsifyReport, model_bytes, sparsify_
from .structured import StructuredReport, find_channel_groups, prune_structured  # noqa: F401  (structured)

__all__ = ["SparsifyConfig", "SparsifyReport", "model_bytes", "sparsify_"]


def __getattr__(name: str):
    if name == "SparsifySummary":  # deprecated alias: sparsify's own __getattr__ warns
        return _sparsify_module.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
