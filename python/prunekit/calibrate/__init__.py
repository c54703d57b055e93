"""Calibration: statistics accumulated from a layer's inputs."""

from .hessian import HessianAccumulator

__all__ = ["HessianAccumulator"]
