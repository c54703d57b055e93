"""Pruning criteria and solvers by name: what ``PruneConfig(method=...)`` looks up.

Register your own with :func:`register_criterion` (``prunekit.register_criterion``); a criterion
is a callable ``criterion(weight, stats) -> scores`` with declared facts (``needs``, ``per_row``;
see :mod:`prunekit.criteria.registry`). The built-ins (magnitude, global_magnitude, wanda, gblm,
random, and the solver sparsegpt) are registered the same way.

    def squared_norms(weight, stats):
        return weight.abs() * stats.input_norms.square()
    squared_norms.needs = {"input_norms"}
    prunekit.register_criterion("squared_norms", squared_norms)
    prunekit.prune(model, prunekit.PruneConfig(method="squared_norms", sparsity="2:4"), calib)
"""

from .registry import (CALIBRATION_STATISTICS, DEFAULT_NEEDS, NEEDS, Criterion, Solver, declare, display_name,
                       names, register_criterion, register_solver, resolve)
from .stats import LayerStats
from . import builtin_methods  # noqa: E402,F401  (registers the built-ins)

__all__ = ["Criterion", "Solver", "LayerStats", "declare", "register_criterion", "register_solver", "names",
           "resolve", "display_name", "NEEDS", "DEFAULT_NEEDS", "CALIBRATION_STATISTICS"]
