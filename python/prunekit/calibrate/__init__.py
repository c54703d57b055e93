"""Calibration: statistics accumulated from a layer's inputs."""

from .gradients import gradient_norms
from .hessian import HessianAccumulator
from .pipeline import LayerInputStats, PrunableLayer, find_blocks, find_prunable_layers, walk_blocks

__all__ = ["HessianAccumulator", "gradient_norms"]
__all__ += ["LayerInputStats", "PrunableLayer", "find_blocks", "find_prunable_layers", "walk_blocks"]
