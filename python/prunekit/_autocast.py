"""The ``torch.autocast`` options of training loops (block refinement, recovery, sampling)."""

from __future__ import annotations

import contextlib

import torch

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(value, what: str, allowed: tuple[str, ...] = tuple(AUTOCAST_DTYPES)) -> torch.dtype | None:
    """The ``torch.autocast`` dtype that an option names (one of ``allowed``, those torch dtypes, or
    None: off); ValueError naming ``what`` for anything else."""
    dtypes = {name: AUTOCAST_DTYPES[name] for name in allowed}
    if value is None or value in dtypes.values():
        return value
    if isinstance(value, str) and value in dtypes:
        return dtypes[value]
    names = " or ".join(repr(name) for name in allowed)
    raise ValueError(f"{what}: expected None, {names} (or the torch dtype{'s' if len(allowed) > 1 else ''}), but got "
                     f"{value!r}")


def autocast_or_nothing(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast(device_type, dtype)``, or a context that does nothing when ``dtype`` is None."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
