"""How a pruning run is spread: the few seams where the pipeline meets distribution.

:func:`prunekit.prune` and :func:`prunekit.calibrate.walk_blocks` call a strategy where a run
could be spread over processes: they guard each step of local work, shard the calibration items,
agree on their inputs, reduce the statistics and solve a block's layers. The
:class:`SingleProcessStrategy` does each of these plainly and exchanges nothing; the
:class:`ProcessGroupStrategy` spreads them over the ranks of a ``torch.distributed`` process
group (see :mod:`prunekit.distributed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist

from . import collectives, process_group
from .collectives import DistributedError


class SingleProcessStrategy:
    """One process does all the work: every seam is a plain call, nothing is exchanged."""

    rank = 0
    world = 1
    is_main = True  # the process that shows progress bars

    def __repr__(self) -> str:
        return "SingleProcessStrategy()"

    def describe(self) -> str:
        """A suffix for log lines naming this process among the others ("" alone)."""
        return ""

    def guard(self, what: str) -> contextlib.AbstractContextManager:
        """Runs a step of local work; an exception propagates as is."""
        return contextlib.nullcontext()

    def check(self, error: BaseException | None, what: str) -> None:
        """Raises ``error`` (the local outcome of ``what``) if there is one."""
        if error is not None:
            raise error

    def shard(self, items: Iterable) -> list:
        """This process's share of the calibration items: all of them."""
        return list(items)

    def agree(self, facts: Callable[[], Mapping[str, object]] | Mapping[str, object], what: str) -> None:
        """Checks that every process runs ``what`` on the same inputs (``facts``, or a callable
        returning them, computed only where there is something to compare): nothing to compare."""

    def reduce_statistics(self, stats: Iterable) -> None:
        """Combines every process's layer statistics: they are complete already."""

    def reduce_sums_(self, tensors: Mapping[str, torch.Tensor], what: str) -> None:
        """Sums each tensor over the processes, in place: they are complete already."""

    def solve(self, names: Sequence[str], solve: Callable[[str], tuple[float, float] | None], *,
              weight: Callable[[str], torch.Tensor], cost: Callable[[str], float], replicated: bool,
              what: str) -> dict[str, tuple[float, float] | None]:
        """Runs ``solve(name)`` for every name, in order, and returns its results by name.

        ``solve`` prunes a layer (its weight is then ``weight(name)``) and returns the terms
        of its reconstruction error; ``cost(name)`` is its relative cost; ``replicated``: every
        process must solve every layer itself, in order (a criterion drawing random numbers)."""
        return {name: solve(name) for name in names}


class ProcessGroupStrategy(SingleProcessStrategy):
    """A run spread over the ranks of a process group: rank r calibrates on items r, r + world,
    ...; statistics are summed with their token counts; a block's solves are spread over the
    ranks by cost and every pruned weight is broadcast from the rank that solved it. Local work
    runs under :meth:`guard`, so one rank's failure stops every rank with a
    :class:`DistributedError` naming it."""

    def __init__(self, group=None):
        if not process_group.is_enabled(group):
            raise ValueError("prunekit.distributed.ProcessGroupStrategy: expected an initialised process group "
                             "with more than one rank (call prunekit.distributed.init_from_env() under torchrun)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.is_main = self.rank == 0

    def __repr__(self) -> str:
        return f"ProcessGroupStrategy(rank={self.rank}, world={self.world}, backend={self.backend!r})"

    def describe(self) -> str:
        return f" (rank {self.rank} of {self.world}, {self.backend})"

    @contextlib.contextmanager
    def guard(self, what: str):
        """Runs the body; then all ranks agree whether any of them raised, and all raise
        :class:`DistributedError` if so. Every rank must enter the same guards in the same order."""
        try:
            yield
        except DistributedError:
            raise  # raised by a collective inside the body: every rank is already stopping
        except Exception as error:
            self.check(error, what)
            raise  # unreachable: check raised
        self.check(None, what)

    def check(self, error: BaseException | None, what: str) -> None:
        collectives.check(error, what, self.group)

    def shard(self, items: Iterable) -> list:
        """This rank's calibration items: items[rank::world]; every rank needs at least one."""
        items = list(items)
        if len(items) < self.world:
            raise ValueError(f"calib: distributed calibration over {self.world} ranks needs at least one item per "
                             f"rank, but got {len(items)} items")
        return items[self.rank::self.world]

    def all_reduce_sum_(self, tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        return collectives.all_reduce_sum_(tensor, self.group, what)

    def broadcast_(self, tensor: torch.Tensor, src: int, what: str = "broadcast") -> torch.Tensor:
        return collectives.broadcast_(tensor, src, self.group, what)

    def all_gather_object(self, obj, what: str = "all_gather_object") -> list:
        return collectives.all_gather_object(obj, self.group, what)

    def agree(self, facts: Callable[[], Mapping[str, object]] | Mapping[str, object], what: str) -> None:
        """Checks that every rank passes the same ``facts`` (str -> anything with a stable repr;
        or a callable returning them); raises ValueError on every rank naming the first fact that
        differs and each rank's value."""
        facts = facts() if callable(facts) else facts
        digests = {key: hashlib.sha256(repr(value).encode()).hexdigest()[:16] for key, value in facts.items()}
        gathered = self.all_gather_object(digests, what=f"the agreement check on {what}")
        for key in facts:
            if len({g.get(key) for g in gathered}) > 1:
                values = self.all_gather_object(repr(facts[key])[:200], what=f"the agreement report on {what}")
                listing = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
                raise ValueError(f"prunekit.distributed: every rank must run {what} on the same inputs, but they "
                                 f"differ in {key}: {listing}")

    def reduce_statistics(self, stats: Iterable) -> None:
        """Sums each statistics object's accumulators over the ranks (``stats.combine``), so every
        rank holds the statistics of all ranks' items."""
        for layer_stats in stats:
            layer_stats.combine(self.all_reduce_sum_)

    def reduce_sums_(self, tensors: Mapping[str, torch.Tensor], what: str) -> None:
        for name, tensor in tensors.items():
            self.all_reduce_sum_(tensor, what=f"{what} of layer {name}")

    def assign(self, costs: Mapping[str, float]) -> dict[str, int]:
        """The rank that solves each job, balanced by ``costs`` (see :func:`assign_owners`)."""
        return assign_owners(costs, self.world)

    def solve(self, names, solve, *, weight, cost, replicated, what):
        """Each layer is solved by one rank (balanced by ``cost``, the same assignment on every
        rank), its pruned weight broadcast from there and the error terms summed, so every rank
        ends with the same layers and terms. ``replicated``: every rank solves every layer."""
        if replicated:
            with self.guard(what):
                return {name: solve(name) for name in names}
        owners = self.assign({name: cost(name) for name in names})
        terms = torch.zeros(len(names), 2, dtype=torch.float64)
        with self.guard(what):
            for i, name in enumerate(names):
                if owners[name] == self.rank:
                    terms[i] = torch.tensor(solve(name), dtype=torch.float64)
        for name in names:
            self.broadcast_(weight(name), owners[name],
                            what=f"the broadcast of {name}'s pruned weight from rank {owners[name]}")
        self.all_reduce_sum_(terms, what=f"the reconstruction errors after {what}")
        return {name: (float(terms[i, 0]), float(terms[i, 1])) for i, name in enumerate(names)}


def strategy_for(distributed: bool | None, process_group_=None, *,
                 argument: str = "distributed") -> SingleProcessStrategy:
    """The strategy of a run: ``distributed`` None spreads it over ``process_group_`` (default:
    the default group) when torch.distributed is initialised with more than one rank; True
    insists on that; False runs in this process alone. ``argument`` names the setting in errors."""
    if distributed is False:
        return SingleProcessStrategy()
    if process_group.is_enabled(process_group_):
        return ProcessGroupStrategy(process_group_)
    if distributed:
        state = "not initialised" if not (dist.is_available() and dist.is_initialized()) else \
            f"initialised with world size {dist.get_world_size(process_group_)}"
        raise ValueError(f"{argument}: True needs torch.distributed initialised with more than one rank (launch "
                         f"with torchrun and call prunekit.distributed.init_from_env()), but it is {state}")
    return SingleProcessStrategy()


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
