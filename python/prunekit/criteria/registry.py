"""The registry of pruning methods that ``PruneConfig(method=...)`` names: criteria and solvers.

A *criterion* scores weights and lets prunekit choose the mask: ``criterion(weight, stats) ->
scores``, ``weight`` the layer's (out_features, in_features) fp32 matrix, ``scores`` a floating
tensor of the same shape (higher keeps), ``stats`` a :class:`~prunekit.criteria.LayerStats`
holding what the criterion declared it needs. The mask (exact counts, N:M, per-layer sparsities of
the allocation) and DSnoT refinement are prunekit's, so a criterion works with every pattern,
allocation and ``refine``. A *solver* (SparseGPT) computes the pruned weight itself.

Declared facts are read from attributes of the callable (set them, or use :func:`declare`):

- ``needs``: the statistics it reads, a set of names among :data:`NEEDS`: "input_norms" (||X_j||
  over the calibration tokens), "input_mean", "input_var", "hessian" (2/n X^T X), "gradients"
  (||G||, the L2 norm over calibration items of the loss gradient of each weight: a backward pass
  that runs only when some criterion needs it), "generator" (a torch.Generator seeded by
  ``PruneConfig.seed``, drawn from layer after layer in order). Default :data:`DEFAULT_NEEDS`:
  the statistics of the layer inputs, which one calibration pass gathers. An empty set makes the
  criterion data-free (``calib`` may be None).
- ``per_row``: compare scores within each output row (Wanda) instead of across the layer
  (default False).
- ``allocation``: an allocation the criterion implies, over ``PruneConfig.allocation`` (the
  built-in "global_magnitude" is magnitude with "global"); default None.
- ``options``: names of PruneConfig fields passed to it as keyword arguments (the built-ins'
  tuning knobs, e.g. gblm's ``gblm_gradient_scale``); default ().

A distributed run needs the same registrations on every rank (the ranks compare the method's name).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..allocation import ALLOCATIONS
from ..solvers.masks import select_mask

CALIBRATION_STATISTICS = frozenset({"input_norms", "input_mean", "input_var", "hessian", "gradients"})
"""The needs that calibration data provides (a criterion needing none of them is data-free)."""
NEEDS = CALIBRATION_STATISTICS | {"generator"}
DEFAULT_NEEDS = frozenset({"input_norms", "input_mean", "input_var", "hessian"})

_REGISTRY: dict[str, Criterion | Solver] = {}


@dataclass(frozen=True)
class Criterion:
    """A criterion with its declared facts (see the module docstring)."""

    name: str
    score: Callable
    needs: frozenset[str]
    per_row: bool = False
    allocation: str | None = None
    options: tuple[str, ...] = ()
    refinable = True  # DSnoT can refine the masks it selects

    def prune(self, weight: torch.Tensor, stats, *, sparsity: float | None, pattern: tuple[int, int] | None,
              refine: Callable | None, name: str, options: dict) -> torch.Tensor:
        """The pruned (out, in) fp32 weight: the kept scores' weights, the others zero.
        ``refine(weight, keep) -> keep`` refines the mask before it is applied."""
        scores = self.score(weight, stats, **options)
        if not isinstance(scores, torch.Tensor) or scores.shape != weight.shape or not scores.is_floating_point():
            got = (f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, torch.Tensor)
                   else type(scores).__name__)
            raise ValueError(f"criterion {self.name!r} ({name}): expected scores as a floating tensor of the "
                             f"weight's shape {tuple(weight.shape)}, but got {got}")
        keep = select_mask(scores, sparsity=sparsity, pattern=pattern, per_row=self.per_row, name=name)
        if refine is not None:
            keep = refine(weight, keep)
        return weight * keep

    def cost(self, out_features: int, in_features: int) -> float:
        """Relative cost of pruning a layer (spreads a block's layers over ranks): the reconstruction
        error tr(dW H dW^T) that every layer's report computes, out * in^2."""
        return float(out_features) * in_features * in_features


@dataclass(frozen=True)
class Solver:
    """A solver: ``solve(weight, stats, *, sparsity, pattern, name, **options) -> pruned weight``
    (weight reconstruction, e.g. SparseGPT). ``extra_cost(out, in)`` is the cost of its solve on
    top of the error every layer's report computes."""

    name: str
    solve: Callable
    needs: frozenset[str]
    options: tuple[str, ...] = ()
    extra_cost: Callable[[int, int], float] | None = None
    allocation = None
    per_row = False
    refinable = False  # it updates the weights: a mask refinement would undo that

    def prune(self, weight: torch.Tensor, stats, *, sparsity: float | None, pattern: tuple[int, int] | None,
              refine: Callable | None, name: str, options: dict) -> torch.Tensor:
        if refine is not None:
            raise ValueError(f"solver {self.name!r} ({name}): its weights cannot be refined")
        return self.solve(weight, stats, sparsity=sparsity, pattern=pattern, name=name, **options).to(torch.float32)

    def cost(self, out_features: int, in_features: int) -> float:
        cost = float(out_features) * in_features * in_features
        if self.extra_cost is not None:
            cost += self.extra_cost(out_features, in_features)
        return cost


def declare(*, needs: Iterable[str] | None = None, per_row: bool | None = None, allocation: str | None = None,
            options: Iterable[str] | None = None) -> Callable:
    """Decorator setting a criterion function's declared facts (checked when it is registered or
    used): ``@declare(needs={"input_norms"}, per_row=True)``."""
    def apply(function):
        for key, value in (("needs", needs), ("per_row", per_row), ("allocation", allocation), ("options", options)):
            if value is not None:
                setattr(function, key, value)
        return function
    return apply


def display_name(obj) -> str:
    """How reports name a criterion object: its ``name`` attribute, a function's name, or its class."""
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return obj.__name__
    return type(obj).__name__


def _needs(obj, where: str) -> frozenset[str]:
    needs = getattr(obj, "needs", DEFAULT_NEEDS)
    if isinstance(needs, str) or not isinstance(needs, (set, frozenset, tuple, list)):
        raise ValueError(f"{where}: needs: expected a set of names among {sorted(NEEDS)}, but got {needs!r}")
    unknown = [need for need in needs if need not in NEEDS]
    if unknown:
        raise ValueError(f"{where}: needs: expected names among {sorted(NEEDS)}, but got {unknown!r}")
    return frozenset(needs)


def _options(obj, where: str) -> tuple[str, ...]:
    options = getattr(obj, "options", ())
    if isinstance(options, str) or not isinstance(options, (set, frozenset, tuple, list)) or \
            not all(isinstance(option, str) for option in options):
        raise ValueError(f"{where}: options: expected a tuple of PruneConfig field names, but got {options!r}")
    return tuple(options)


def _check_callable(obj, where: str, signature: str) -> None:
    if not callable(obj):
        raise ValueError(f"{where}: expected a callable {signature}, but got {type(obj).__name__}")


def as_criterion(obj, name: str, where: str) -> Criterion:
    """``obj`` with its declared facts checked, as a :class:`Criterion` named ``name``."""
    _check_callable(obj, where, "criterion(weight, stats) -> scores")
    per_row = getattr(obj, "per_row", False)
    if not isinstance(per_row, bool):
        raise ValueError(f"{where}: per_row: expected True or False, but got {per_row!r}")
    allocation = getattr(obj, "allocation", None)
    if allocation is not None and allocation not in ALLOCATIONS:
        raise ValueError(f"{where}: allocation: expected None or one of {', '.join(ALLOCATIONS)}, but got "
                         f"{allocation!r}")
    return Criterion(name, obj, _needs(obj, where), per_row, allocation, _options(obj, where))


def _check_name(name, where: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: name: expected a non-empty string, but got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"{where}: name: {name!r} is already registered (registered names: {', '.join(_REGISTRY)}); "
                         "choose another name")


def register_criterion(name: str, criterion: Callable) -> Callable:
    """Registers ``criterion`` (a callable ``criterion(weight, stats) -> scores`` with its declared
    facts; see :mod:`prunekit.criteria`) under ``name``, so ``PruneConfig(method=name)`` uses it.
    Returns ``criterion``. A name is registered once; facts are checked now."""
    where = f"register_criterion({name!r})"
    _check_name(name, where)
    _REGISTRY[name] = as_criterion(criterion, name, where)
    return criterion


def register_solver(name: str, solve: Callable) -> Callable:
    """Registers a solver ``solve(weight, stats, *, sparsity, pattern, name, **options) -> pruned
    weight`` under ``name``. Declared facts: ``needs`` and ``options`` as for criteria, and
    ``extra_cost(out_features, in_features)``, the relative cost of one solve. Returns ``solve``."""
    where = f"register_solver({name!r})"
    _check_name(name, where)
    _check_callable(solve, where, "solve(weight, stats, *, sparsity, pattern, name) -> pruned weight")
    _REGISTRY[name] = Solver(name, solve, _needs(solve, where), _options(solve, where),
                             getattr(solve, "extra_cost", None))
    return solve


def names() -> tuple[str, ...]:
    """The registered method names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def resolve(method, where: str = "method") -> Criterion | Solver:
    """The registered method named ``method``, or the criterion object ``method`` with its facts
    checked (a registered object keeps its registered name)."""
    if isinstance(method, str):
        if method not in _REGISTRY:
            raise ValueError(f"{where}: expected one of {', '.join(_REGISTRY)} or a criterion object, but got "
                             f"{method!r}")
        return _REGISTRY[method]
    if isinstance(method, (Criterion, Solver)):
        return method
    for entry in _REGISTRY.values():
        if isinstance(entry, Criterion) and entry.score is method:
            return entry
    if not callable(method):
        raise ValueError(f"{where}: expected one of {', '.join(_REGISTRY)} or a callable criterion(weight, stats) "
                         f"-> scores, but got {type(method).__name__}")
    return as_criterion(method, display_name(method), where)
