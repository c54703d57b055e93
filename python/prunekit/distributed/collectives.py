"""Collectives with clear errors: a lost rank or a timeout becomes a :class:`DistributedError`
naming the operation, and :func:`check` turns one rank's exception into an error on every rank."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from . import process_group


class DistributedError(RuntimeError):
    """A rank failed, or lost contact with the others; raised on every rank. ``failed_ranks``
    lists the ranks that reported an error (empty when a rank vanished without reporting)."""

    def __init__(self, message: str, failed_ranks: Sequence[int] = ()):
        super().__init__(message)
        self.failed_ranks = list(failed_ranks)


def _collective(what: str, fn: Callable, group=None):
    try:
        return fn()
    except DistributedError:
        raise
    except Exception as error:  # gloo: connection closed / timeout; nccl: timeout, remote error
        rank = process_group.get_rank(group)
        raise DistributedError(
            f"prunekit.distributed: rank {rank} lost contact with the other ranks during {what}: another rank "
            f"exited or did not arrive within {process_group.describe_timeout()} ({type(error).__name__}: "
            f"{error})") from error


def _staged(tensor: torch.Tensor, group) -> tuple[torch.Tensor, bool]:
    """``tensor`` itself when the backend takes it (its device type, contiguous), else a contiguous
    copy on a device the backend takes (copied back after the collective)."""
    if tensor.device.type in process_group.device_types(group):
        if tensor.is_contiguous():
            return tensor, False
        return tensor.contiguous(), True
    return tensor.to(process_group.comm_device(group)).contiguous(), True


def all_reduce_sum_(tensor: torch.Tensor, group=None, what: str = "all_reduce") -> torch.Tensor:
    """Sums ``tensor`` over the ranks, in place (staged through the backend's device if needed)."""
    buffer, staged = _staged(tensor, group)
    _collective(what, lambda: dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group), group)
    if staged:
        tensor.copy_(buffer)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int, group=None, what: str = "broadcast") -> torch.Tensor:
    """Overwrites ``tensor`` with rank ``src``'s (``src`` is a rank of ``group``), in place."""
    buffer, staged = _staged(tensor, group)
    raw = buffer.reshape(-1).view(torch.uint8)  # bytes: exact for every dtype, whatever the backend supports
    _collective(what, lambda: dist.broadcast(raw, group=group, group_src=src), group)
    if staged:
        tensor.copy_(buffer)
    return tensor


def all_gather_object(obj, group=None, what: str = "all_gather_object") -> list:
    result = [None] * dist.get_world_size(group)
    _collective(what, lambda: dist.all_gather_object(result, obj, group=group), group)
    return result


def check(error: BaseException | None, what: str, group=None) -> None:
    """Every rank calls this at the same point with its local error (or None). If any rank failed,
    every rank raises :class:`DistributedError` naming the failing ranks and their errors (chained
    to the local error on a failing rank). When every rank failed with the same message (bad
    arguments seen by all), each re-raises its own error unchanged."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    flags = torch.zeros(world, dtype=torch.int32, device=process_group.comm_device(group))
    if error is not None:
        flags[rank] = 1
    all_reduce_sum_(flags, group, what=f"the error check after {what}")
    failed = [r for r, flag in enumerate(flags.tolist()) if flag]
    if not failed:
        return
    message = None if error is None else f"{type(error).__name__}: {error}"
    messages = all_gather_object(message, group, what=f"the error report after {what}")
    if error is not None and len(failed) == world and len(set(messages)) == 1:
        raise error  # every rank hit the same error (e.g. bad arguments): raise it as is
    details = "; ".join(f"rank {r}: {messages[r]}" for r in failed)
    ranks = ", ".join(map(str, failed))
    raise DistributedError(f"prunekit.distributed: rank{'s' if len(failed) > 1 else ''} {ranks} of {world} failed "
                           f"during {what}, so every rank stops (this is rank {rank}). {details}",
                           failed) from error
