"""Streaming: prune Hugging Face model directories larger than memory, one block at a time
(:func:`prune_pretrained`)."""

from .pretrained import build_skeleton, prune_pretrained
from .source import SafetensorsSource, SourceError

__all__ = ["prune_pretrained", "build_skeleton", "SafetensorsSource", "SourceError"]
