"""Scale-out on ``torch.distributed``: data-parallel calibration and layer-parallel solving.

Every rank holds the same model and the same list of calibration items (the same checkpoint and
the same data loading code, run by each process that ``torchrun`` starts). prunekit then

- shards the calibration items: rank r calibrates on items r, r + world, r + 2 world, ... and
  keeps only its own items' activations from block to block;
- reduces each layer's statistics with ``all_reduce`` as sums together with the token counts
  (Hessian * n, feature sums, n; squared gradients for GBLM), so every rank ends up with the
  statistics of the union of the items, the same as one process calibrating on all of them (up
  to the order of fp32 additions);
- spreads the solves of a block's layers over the ranks (balanced by cost, the same assignment on
  every rank) and broadcasts every pruned weight from the rank that solved it, so all ranks hold
  identical pruned blocks before they compute the block's outputs for the next one.

Failures: local work between collectives runs under :func:`guard`; at its end the ranks exchange
an error flag, and if any rank failed, *every* rank raises :class:`DistributedError` naming the
failing rank(s) and their error. A rank that dies outright (killed, ``os._exit``) is noticed by
the others at their next collective (gloo: connection closed; otherwise the process group's
timeout), which is turned into a :class:`DistributedError` as well. :func:`save_checkpoint`
writes a final file only on rank 0, after every rank reached it, through a temporary file and
``os.replace``, so a failed run never leaves a partial checkpoint under the final name.

Launch with ``torchrun --nproc-per-node N -m prunekit prune ...``; the command line calls
:func:`init_from_env`, which reads torchrun's environment variables.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import heapq
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ENV_TIMEOUT = "PRUNEKIT_DIST_TIMEOUT"
"""Environment variable: seconds a rank waits at a collective for the others (default 1800)."""
DEFAULT_TIMEOUT_S = 1800.0

_timeout_s: float | None = None  # the timeout init_from_env gave the process group


class DistributedError(RuntimeError):
    """A rank failed, or lost contact with the others; raised on every rank. ``failed_ranks``
    lists the ranks that reported an error (empty when a rank vanished without reporting)."""

    def __init__(self, message: str, failed_ranks: Sequence[int] = ()):
        super().__init__(message)
        self.failed_ranks = list(failed_ranks)


# ----------------------------------------------------------------------------- process group set-up

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
    if is_enabled() and "cuda" in _device_types() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- collectives

def _describe_timeout() -> str:
    return f"{_timeout_s:.0f} s" if _timeout_s is not None else "the process group's timeout"


def _device_types(group=None) -> set[str]:
    """The tensor device types the group's backend takes: "gloo" CPU, "nccl" CUDA, and a combined
    backend ("cpu:gloo,cuda:nccl") each of its devices."""
    backend = str(dist.get_backend(group))
    if ":" in backend:
        return {entry.split(":", 1)[0] for entry in backend.split(",")}
    return {"cuda"} if backend == "nccl" else {"cpu"}


def _comm_device(group=None) -> torch.device:
    """Where small bookkeeping tensors (error flags, counts) live for the group's backend."""
    if "cpu" in _device_types(group):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _collective(what: str, fn: Callable, group=None):
    try:
        return fn()
    except DistributedError:
        raise
    except Exception as error:  # gloo: connection closed / timeout; nccl: timeout, remote error
        rank = get_rank(group)
        raise DistributedError(
            f"prunekit.distributed: rank {rank} lost contact with the other ranks during {what}: another rank "
            f"exited or did not arrive within {_describe_timeout()} ({type(error).__name__}: {error})") from error


def _staged(tensor: torch.Tensor, group) -> tuple[torch.Tensor, bool]:
    """``tensor`` itself when the backend takes it (its device type, contiguous), else a contiguous
    copy on a device the backend takes (copied back after the collective)."""
    if tensor.device.type in _device_types(group):
        if tensor.is_contiguous():
            return tensor, False
        return tensor.contiguous(), True
    return tensor.to(_comm_device(group)).contiguous(), True


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
    flags = torch.zeros(world, dtype=torch.int32, device=_comm_device(group))
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


@contextlib.contextmanager
def guard(context: "Context | None", what: str):
    """Runs the body; then (distributed) all ranks agree whether any of them raised, and all raise
    :class:`DistributedError` if so. Without a context the body's exception propagates as is.
    Every rank must enter the same guards in the same order."""
    if context is None:
        yield
        return
    try:
        yield
    except DistributedError:
        raise  # raised by a collective inside the body: every rank is already stopping
    except Exception as error:
        context.check(error, what)
        raise  # unreachable: check raised
    context.check(None, what)


# ----------------------------------------------------------------------------- context

class Context:
    """The process group a pruning run is spread over: rank, world size, collectives with clear
    errors, sharding of calibration items and assignment of layers to ranks."""

    def __init__(self, group=None):
        if not is_enabled(group):
            raise ValueError("prunekit.distributed.Context: expected an initialised process group with more than "
                             "one rank (call prunekit.distributed.init_from_env() under torchrun)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))

    @classmethod
    def resolve(cls, distributed: bool | None, process_group=None) -> "Context | None":
        """``distributed`` None: use ``process_group`` (default: the default group) if torch.distributed is
        initialised with more than one rank; True: insist on it; False: single process."""
        if distributed is False:
            return None
        if is_enabled(process_group):
            return cls(process_group)
        if distributed:
            state = "not initialised" if not (dist.is_available() and dist.is_initialized()) else \
                f"initialised with world size {dist.get_world_size(process_group)}"
            raise ValueError(f"PruneConfig.distributed: True needs torch.distributed initialised with more than one "
                             f"rank (launch with torchrun and call prunekit.distributed.init_from_env()), but it is "
                             f"{state}")
        return None

    def __repr__(self) -> str:
        return f"Context(rank={self.rank}, world={self.world}, backend={self.backend!r})"

    def shard(self, items: Sequence) -> list:
        """This rank's calibration items: items[rank::world]."""
        return list(items)[self.rank::self.world]

    def all_reduce_sum_(self, tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        return all_reduce_sum_(tensor, self.group, what)

    def broadcast_(self, tensor: torch.Tensor, src: int, what: str = "broadcast") -> torch.Tensor:
        return broadcast_(tensor, src, self.group, what)

    def all_gather_object(self, obj, what: str = "all_gather_object") -> list:
        return all_gather_object(obj, self.group, what)

    def check(self, error: BaseException | None, what: str) -> None:
        check(error, what, self.group)

    def guard(self, what: str):
        return guard(self, what)

    def agree(self, facts: Mapping[str, object], what: str) -> None:
        """Checks that every rank passes the same ``facts`` (str -> anything with a stable repr);
        raises ValueError on every rank naming the first fact that differs and each rank's value."""
        digests = {key: hashlib.sha256(repr(value).encode()).hexdigest()[:16] for key, value in facts.items()}
        gathered = self.all_gather_object(digests, what=f"the agreement check on {what}")
        for key in facts:
            if len({g.get(key) for g in gathered}) > 1:
                values = self.all_gather_object(repr(facts[key])[:200], what=f"the agreement report on {what}")
                listing = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
                raise ValueError(f"prunekit.distributed: every rank must run {what} on the same inputs, but they "
                                 f"differ in {key}: {listing}")

    def assign(self, costs: Mapping[str, float]) -> dict[str, int]:
        return assign_owners(costs, self.world)


def assign_owners(costs: Mapping[str, float], world: int) -> dict[str, int]:
    """Deterministic longest-processing-time assignment of jobs to ``world`` ranks: jobs by falling
    cost (ties by their order in ``costs``), each to the least loaded rank (ties: lowest rank)."""
    if world < 1:
        raise ValueError(f"assign_owners: world: expected >= 1, but got {world}")
    order = sorted(enumerate(costs.items()), key=lambda entry: (-float(entry[1][1]), entry[0]))
    loads = [(0.0, rank) for rank in range(world)]
    owners = {}
    for _, (name, cost) in order:
        load, rank = heapq.heappop(loads)
        owners[name] = rank
        heapq.heappush(loads, (load + float(cost), rank))
    return owners


# ----------------------------------------------------------------------------- checkpoints

def _replace(tmp: str, path: str) -> None:
    """Moves the finished ``tmp`` to ``path``: one os.replace for a file; a directory (e.g. a
    save_pretrained folder) replacing an existing one moves the old one aside first and deletes
    it after, so ``path`` never holds a partial checkpoint."""
    if not (os.path.isdir(tmp) and os.path.isdir(path)):
        os.replace(tmp, path)
        return
    old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old-{os.getpid()}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except Exception:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(path: str | os.PathLike, write: Callable[[str], None], context: "Context | None" = None,
                    *, group=None) -> None:
    """Writes the final checkpoint safely: every rank calls this after a successful run; once all
    arrived (an error check, so a failure elsewhere stops everyone first), rank 0 calls
    ``write(tmp)`` for a temporary path next to ``path`` and renames it to ``path`` with
    ``os.replace``; a failed write removes the temporary file and raises on every rank. Other
    ranks write nothing. ``write`` may create a file or a directory (``save_pretrained``); an
    existing checkpoint at ``path`` is replaced only once the new one is complete. Works in a
    single process too (no context and no process group)."""
    if context is None and is_enabled(group):
        context = Context(group)
    path = os.fspath(path)
    what = f"saving the checkpoint {path}"
    if context is not None:
        context.check(None, f"the run before {what}")
    error = None
    if context is None or context.rank == 0:
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
        try:
            write(tmp)
            if not os.path.exists(tmp):
                raise RuntimeError(f"save_checkpoint: write: expected it to create {tmp!r}, but it did not")
            _replace(tmp, path)
        except Exception as caught:
            error = caught
            with contextlib.suppress(OSError):
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp)
                else:
                    os.remove(tmp)
    if context is None:
        if error is not None:
            raise error
        return
    context.check(error, what)


__all__ = ["DistributedError", "Context", "init_from_env", "shutdown", "is_enabled", "get_rank", "get_world_size",
           "is_main_process", "local_device", "all_reduce_sum_", "broadcast_", "all_gather_object", "check", "guard",
           "assign_owners", "save_checkpoint", "ENV_TIMEOUT", "DEFAULT_TIMEOUT_S"]
