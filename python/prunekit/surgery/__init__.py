"""Model surgery: swap pruned modules for sparse ones (:func:`sparsify_`)."""

from .sparsify import SparsifySummary, model_bytes, sparsify_

__all__ = ["SparsifySummary", "model_bytes", "sparsify_"]
