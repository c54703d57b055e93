"""Calibration: statistics accumulated from a layer's inputs."""

from .hessian import HessianAccumulator
from .pipeline import LayerInputStats, PrunableLayer, find_blocks, find_prunable_layers, walk_blocks

__all__ = ["HessianAccumulator"]
__all__ += ["LayerInputStats", "PrunableLayer", "find_blocks", "find_prunable_layers", "walk_blocks"]
