"""How prunekit names things in messages, reports and checkpoints."""

from __future__ import annotations

import torch


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(value, what: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype that an option names ("bfloat16", "float16", those torch
    dtypes, or None: off); ValueError naming ``what`` for anything else."""
    if value is None or value in AUTOCAST_DTYPES.values():
        return value
    if isinstance(value, str) and value in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[value]
    raise ValueError(f"{what}: expected None, 'bfloat16' or 'float16' (or the torch dtypes), but got {value!r}")


def one_line(error: BaseException) -> str:
    """An error's message on one line of at most 300 characters, for messages that quote another
    library's error (transformers' run to pages)."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
