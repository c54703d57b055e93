"""How prunekit names things in messages, reports and checkpoints."""

from __future__ import annotations

import torch


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def one_line(error: BaseException) -> str:
    """An error's message on one line of at most 300 characters, for messages that quote another
    library's error (transformers' run to pages)."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
