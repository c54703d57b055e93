"""Per-layer pruning math: each solver takes a layer's weight and calibration statistics and
returns the pruned weight and its keep-mask."""

from .sparsegpt import inverse_hessian_factor, sparsegpt
from .patterns import parse_pattern

__all__ = ["inverse_hessian_factor", "parse_pattern", "sparsegpt"]
