"""Scale-out on ``torch.distributed``: data-parallel calibration and layer-parallel solving.

Every rank holds the same model and the same list of calibration items (the same checkpoint and
the same data loading code, run by each process that ``torchrun`` starts). prunekit then

- shards the calibration items: rank r calibrates on items r, r + world, r + 2 world, ... and
  keeps only its own items' activations from block to block;
- reduces each layer's statistics with ``all_reduce`` as sums together with the token counts
  (Hessian * n, feature sums, n; squared gradients for criteria that need gradients), so every
  rank ends up with the statistics of the union of the items, the same as one process
  calibrating on all of them (up to the order of fp32 additions);
- spreads the solves of a block's layers over the ranks (balanced by cost, the same assignment on
  every rank) and broadcasts every pruned weight from the rank that solved it, so all ranks hold
  identical pruned blocks before they compute the block's outputs for the next one.

The pipeline meets these steps only through a strategy (:mod:`.strategy`):
:class:`ProcessGroupStrategy` here, :class:`SingleProcessStrategy` in one process.

Failures: local work between collectives runs under the strategy's ``guard``; at its end the ranks
exchange an error flag, and if any rank failed, *every* rank raises :class:`DistributedError`
naming the failing rank(s) and their error. A rank that dies outright (killed, ``os._exit``) is
noticed by the others at their next collective (gloo: connection closed; otherwise the process
group's timeout), which is turned into a :class:`DistributedError` as well.
:func:`save_checkpoint` writes a final file only on rank 0, after every rank reached it, through a
temporary file and ``os.replace``, so a failed run never leaves a partial checkpoint under the
final name.

Launch with ``torchrun --nproc-per-node N -m prunekit prune ...``; the command line calls
:func:`init_from_env`, which reads torchrun's environment variables.
"""

import warnings

from .checkpoint import save_checkpoint
from .collectives import DistributedError, all_gather_object, all_reduce_sum_, broadcast_, check
from .process_group import (DEFAULT_TIMEOUT_S, ENV_TIMEOUT, get_rank, get_world_size, init_from_env,
                            is_enabled, is_main_process, local_device, shutdown)
from .strategy import ProcessGroupStrategy, SingleProcessStrategy, assign_owners, strategy_for

__all__ = ["DistributedError", "ProcessGroupStrategy", "SingleProcessStrategy", "strategy_for", "init_from_env",
           "shutdown", "is_enabled", "get_rank", "get_world_size", "is_main_process", "local_device",
           "all_reduce_sum_", "broadcast_", "all_gather_object", "check", "assign_owners", "save_checkpoint",
           "ENV_TIMEOUT", "DEFAULT_TIMEOUT_S"]


def _guard(strategy, what: str):
    """Deprecated: ``strategy.guard(what)``."""
    warnings.warn("prunekit.distributed.guard(context, what) is deprecated; use strategy.guard(what) "
                  "(prunekit.distributed.strategy_for)", DeprecationWarning, stacklevel=2)
    return (strategy or SingleProcessStrategy()).guard(what)


def __getattr__(name: str):
    # Names of the previous release, for one release: Context became ProcessGroupStrategy.
    if name == "Context":
        warnings.warn("prunekit.distributed.Context is deprecated; use prunekit.distributed.ProcessGroupStrategy "
                      "(or strategy_for(distributed, process_group))", DeprecationWarning, stacklevel=2)
        return ProcessGroupStrategy
    if name == "guard":
        return _guard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
