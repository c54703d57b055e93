"""Lossless compressed checkpoints in safetensors (no pickle): :func:`save`, :func:`load`,
:func:`read_info`. See :mod:`prunekit.io.checkpoint` for the format."""

from .checkpoint import CONFIG_NAME, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_NAME, load, read_info, save
from .safetensors_file import CheckpointError

__all__ = ["CONFIG_NAME", "CheckpointError", "FORMAT_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "load", "read_info",
           "save"]
