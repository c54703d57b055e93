"""Joining and leaving the process group that ``torchrun`` describes; rank and device queries."""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ENV_TIMEOUT = "PRUNEKIT_DIST_TIMEOUT"
"""Environment variable: seconds a rank waits at a collective for the others (default 1800)."""
DEFAULT_TIMEOUT_S = 1800.0

_timeout_s: float | None = None  # the timeout init_from_env gave the process group


def describe_timeout() -> str:
    """How long a collective waits, for error messages."""
    return f"{_timeout_s:.0f} s" if _timeout_s is not None else "the process group's timeout"


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"init_from_env: environment variable {name}: expected an integer (torchrun sets it), "
                         f"but got {value!r}") from None


def _timeout_from_env() -> float:
    value = os.environ.get(ENV_TIMEOUT)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"init_from_env: environment variable {ENV_TIMEOUT}: expected a positive number of "
                         f"seconds, but got {value!r}")
    return seconds


def init_from_env(*, backend: str | None = None, timeout: float | None = None) -> bool:
    """Joins the process group that ``torchrun`` (or any launcher setting its variables) describes.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. With
    ``WORLD_SIZE`` unset or 1 nothing happens and False is returned (single process). Otherwise
    the default process group is initialised with ``backend`` (default: "nccl" when CUDA is
    available, each rank on GPU ``LOCAL_RANK``; "gloo" on CPU) and a collective ``timeout`` in
    seconds (default: the ``PRUNEKIT_DIST_TIMEOUT`` environment variable, else 1800), and True
    is returned. If the process group is already initialised, returns whether it has more than
    one rank. Call :func:`shutdown` at the end.
    """
    global _timeout_s
    if not dist.is_available():
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise RuntimeError("init_from_env: WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if os.environ.get("WORLD_SIZE") is None:
        return False
    world = _env_int("WORLD_SIZE")
    if world < 1:
        raise ValueError(f"init_from_env: environment variable WORLD_SIZE: expected >= 1, but got {world}")
    if world == 1:
        return False
    rank = _env_int("RANK")
    if not 0 <= rank < world:
        raise ValueError(f"init_from_env: environment variable RANK: expected 0 <= RANK < WORLD_SIZE = {world}, "
                         f"but got {rank}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"init_from_env: environment variable {name}: expected it to be set (torchrun sets "
                             f"it), but it is {os.environ.get(name)!r}")
    if timeout is None:
        timeout = _timeout_from_env()
    elif not timeout > 0:
        raise ValueError(f"init_from_env: timeout: expected a positive number of seconds, but got {timeout!r}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"init_from_env: backend: expected 'gloo' or 'nccl', but got {backend!r}")
    kwargs = {}
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("init_from_env: backend 'nccl' needs CUDA GPUs, but torch.cuda.is_available() is False")
        local_rank = _env_int("LOCAL_RANK") if os.environ.get("LOCAL_RANK") is not None else 0
        if not 0 <= local_rank < torch.cuda.device_count():
            raise ValueError(f"init_from_env: environment variable LOCAL_RANK: expected 0 <= LOCAL_RANK < "
                             f"{torch.cuda.device_count()} (the GPUs visible to this process), but got {local_rank}")
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout), **kwargs)
    _timeout_s = float(timeout)
    logger.info("prunekit.distributed: rank %d of %d joined (%s backend, timeout %.0f s)", rank, world, backend,
                timeout)
    return True


def shutdown() -> None:
    """Leaves the process group (if one is initialised)."""
    global _timeout_s
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _timeout_s = None


def is_enabled(group=None) -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def get_rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def get_world_size(group=None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def is_main_process(group=None) -> bool:
    """True on rank 0, and in a single process: the rank that prints and writes files."""
    return get_rank(group) == 0


def local_device() -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` under NCCL (the current CUDA device),
    else the CPU. Pass it as ``PruneConfig(device=...)`` to prune one block at a time on it."""
    if is_enabled() and "cuda" in device_types() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_types(group=None) -> set[str]:
    """The tensor device types the group's backend takes: "gloo" CPU, "nccl" CUDA, and a combined
    backend ("cpu:gloo,cuda:nccl") each of its devices."""
    backend = str(dist.get_backend(group))
    if ":" in backend:
        return {entry.split(":", 1)[0] for entry in backend.split(",")}
    return {"cuda"} if backend == "nccl" else {"cpu"}


def comm_device(group=None) -> torch.device:
    """Where small bookkeeping tensors (error flags, counts) live for the group's backend."""
    if "cpu" in device_types(group):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())
