"""Importance of coupled channel groups for structured pruning, and FLAP's bias compensation.

A *channel group* is a set of channels that must be removed together: e.g. one intermediate
channel of an MLP (a row of up_proj and gate_proj, a column of down_proj), one key/value head
with its query heads (rows of q/k/v, columns of o_proj), or one channel of a CNN's residual
stream (rows of every conv adding into it, its BatchNorm entries, columns of every consumer).
The group has ``units`` prunable units; every member module sees each unit as a few of its
weight rows (a producer, role "out": the unit's output channels) or weight columns (a consumer,
role "in": the unit's input features; for a Conv2d, every kernel position of the channel).

The criteria here score units from :class:`MemberWeights`, the matrix view of each member
((out_features, in_features), convolutions unfolded like :class:`~prunekit.calibrate.pipeline.PrunableLayer`)
plus the statistics a criterion needs:

- ``magnitude``: the L2 norm of all of the unit's weights in the group.
- ``taylor``: sum of |w * dL/dw| over the unit's weights (first-order Taylor estimate of the
  loss change when the unit is removed; gradients summed over the calibration batches).
- ``wanda``: sum of |W_ij| * ||X_j|| over the unit's weights (Wanda's score summed over the
  structure); a producer's rows use the producer's input norms, a consumer's columns its own.
- ``flap``: FLAP's fluctuation metric (An et al., 2024): for each consumer column j,
  Var(X_j) * ||W_:,j||^2 (the variance of the input feature over the calibration samples times
  the squared norm of the weight column), summed over the unit's columns. Removing a column
  whose input barely fluctuates loses little once its mean is compensated:
  :func:`bias_compensation` gives W[:, removed] @ mean(X[removed]), added to the consumer's bias.

Importances are objects in a registry, as in Torch-Pruning: an importance is a callable
``importance(members, units) -> scores`` (a (units,) tensor, higher keeps) that declares in
``needs`` what the pruner must collect for it ("statistics": the members' input statistics over the
calibration data; "gradients": dL/dW summed over it; nothing: data-free) and in
``compensates_bias`` whether FLAP's bias compensation is its default. The four above are
registered under their names; :func:`register_importance` adds one from outside, and
``StructuredConfig(method=...)`` takes a registered name or an importance object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

NEEDS = ("statistics", "gradients")


@dataclass
class MemberWeights:
    """One member of a channel group as a criterion sees it.

    - ``role``: "out" (the unit's channels are rows of ``matrix``) or "in" (columns).
    - ``matrix``: the weight as (out_features, in_features), convolutions unfolded (in * kh * kw).
    - ``index``: (units, k) long tensor: the rows ("out") or columns ("in") of each unit.
    - ``gradient``: dL/dW in ``matrix``'s layout (taylor).
    - ``input_norms``, ``input_var``: per column of ``matrix``, over the calibration inputs of this
      member (wanda uses the norms of both roles, flap the variance of consumers).
    """

    role: str
    matrix: torch.Tensor
    index: torch.Tensor
    gradient: torch.Tensor | None = None
    input_norms: torch.Tensor | None = None
    input_var: torch.Tensor | None = None
    name: str = "member"

    def __post_init__(self):
        if self.role not in ("out", "in"):
            raise ValueError(f"MemberWeights: role must be 'out' or 'in', but got {self.role!r} ({self.name})")
        if self.matrix.dim() != 2:
            raise ValueError(f"MemberWeights: matrix must be 2-D (out_features, in_features), but got shape "
                             f"{tuple(self.matrix.shape)} ({self.name})")
        if self.index.dim() != 2:
            raise ValueError(f"MemberWeights: index must be (units, k), but got shape {tuple(self.index.shape)} "
                             f"({self.name})")
        axis = 0 if self.role == "out" else 1
        limit = self.matrix.shape[axis]
        if self.index.numel() and (int(self.index.min()) < 0 or int(self.index.max()) >= limit):
            raise ValueError(f"MemberWeights: index must lie in [0, {limit}) for role {self.role!r} of a "
                             f"{tuple(self.matrix.shape)} matrix ({self.name})")

    def gather(self, per_weight: torch.Tensor) -> torch.Tensor:
        """Sums a per-weight score (matrix layout) over each unit's rows or columns: (units,)."""
        if self.role == "out":
            per_line = per_weight.sum(dim=1)
        else:
            per_line = per_weight.sum(dim=0)
        return per_line[self.index].sum(dim=1)

    def gather_lines(self, per_line: torch.Tensor) -> torch.Tensor:
        """Sums a per-row ("out") or per-column ("in") score over each unit: (units,)."""
        return per_line[self.index].sum(dim=1)


def _check_units(members: list[MemberWeights], units: int) -> None:
    if units <= 0:
        raise ValueError(f"structured importance: units must be > 0, but got {units}")
    for member in members:
        if member.index.shape[0] != units:
            raise ValueError(f"structured importance: member {member.name} has {member.index.shape[0]} units, "
                             f"expected {units}")


def magnitude_unit_scores(members: list[MemberWeights], units: int) -> torch.Tensor:
    """L2 norm of each unit's weights over the whole group."""
    _check_units(members, units)
    total = torch.zeros(units, dtype=torch.float64)
    for member in members:
        squares = member.matrix.detach().to(torch.float64).square()
        total += member.gather(squares).cpu()
    return total.sqrt().to(torch.float32)


def taylor_unit_scores(members: list[MemberWeights], units: int) -> torch.Tensor:
    """Sum of |w * grad| over each unit's weights (members without a gradient are skipped)."""
    _check_units(members, units)
    total = torch.zeros(units, dtype=torch.float64)
    used = 0
    for member in members:
        if member.gradient is None:
            continue
        if member.gradient.shape != member.matrix.shape:
            raise ValueError(f"taylor: the gradient of {member.name} must have the matrix shape "
                             f"{tuple(member.matrix.shape)}, but got {tuple(member.gradient.shape)}")
        product = (member.matrix.detach().to(torch.float64) * member.gradient.to(torch.float64)).abs()
        total += member.gather(product).cpu()
        used += 1
    if used == 0:
        raise ValueError("taylor: no member of the group has a gradient (did the loss depend on these layers?)")
    return total.to(torch.float32)


def wanda_unit_scores(members: list[MemberWeights], units: int) -> torch.Tensor:
    """Sum of |W_ij| * ||X_j|| over each unit's weights (members without input norms are skipped)."""
    _check_units(members, units)
    total = torch.zeros(units, dtype=torch.float64)
    used = 0
    for member in members:
        if member.input_norms is None:
            continue
        norms = member.input_norms.to(torch.float64)
        if norms.shape != (member.matrix.shape[1],):
            raise ValueError(f"wanda: input_norms of {member.name} must have shape ({member.matrix.shape[1]},), "
                             f"but got {tuple(norms.shape)}")
        scores = member.matrix.detach().to(torch.float64).abs() * norms.to(member.matrix.device).unsqueeze(0)
        total += member.gather(scores).cpu()
        used += 1
    if used == 0:
        raise ValueError("wanda: no member of the group has input statistics")
    return total.to(torch.float32)


def flap_unit_scores(members: list[MemberWeights], units: int) -> torch.Tensor:
    """FLAP's fluctuation: sum over each unit's consumer columns j of Var(X_j) * ||W_:,j||^2."""
    _check_units(members, units)
    total = torch.zeros(units, dtype=torch.float64)
    used = 0
    for member in members:
        if member.role != "in" or member.input_var is None:
            continue
        variance = member.input_var.to(torch.float64)
        if variance.shape != (member.matrix.shape[1],):
            raise ValueError(f"flap: input_var of {member.name} must have shape ({member.matrix.shape[1]},), "
                             f"but got {tuple(variance.shape)}")
        column_norms = member.matrix.detach().to(torch.float64).square().sum(dim=0)
        fluctuation = variance.to(column_norms.device) * column_norms
        total += member.gather_lines(fluctuation).cpu()
        used += 1
    if used == 0:
        raise ValueError("flap: the group has no consumer layer with input statistics (FLAP scores the input "
                         "columns of the layers that read the pruned channels)")
    return total.to(torch.float32)


# ----------------------------------------------------------------------------- the registry

class Importance:
    """Base of the structured importances (Torch-Pruning's style): subclass it and define
    ``__call__(members, units) -> scores`` ((units,) tensor, higher keeps), or register any
    callable with the same signature (``needs`` and ``compensates_bias`` read from it when set).

    - ``needs``: what the pruner collects before scoring, some of ``NEEDS``: "statistics" fills
      :attr:`MemberWeights.input_norms` / :attr:`MemberWeights.input_var` from the calibration
      data, "gradients" fills :attr:`MemberWeights.gradient` (dL/dW of ``StructuredConfig.loss_fn``
      summed over the calibration batches). Empty: data-free, no calibration needed.
    - ``compensates_bias``: the default of ``StructuredConfig.bias_compensation`` with this importance.
    """

    needs: frozenset[str] = frozenset()
    compensates_bias: bool = False

    def __call__(self, members: list[MemberWeights], units: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}: an importance must define __call__(members, units)")


class MagnitudeImportance(Importance):
    """L2 norm of each unit's weights over the group (:func:`magnitude_unit_scores`); no data."""

    def __call__(self, members, units):
        return magnitude_unit_scores(members, units)


class TaylorImportance(Importance):
    """Sum of |w * dL/dw| over each unit's weights (:func:`taylor_unit_scores`)."""

    needs = frozenset({"gradients"})

    def __call__(self, members, units):
        return taylor_unit_scores(members, units)


class WandaImportance(Importance):
    """Sum of |W_ij| * ||X_j|| over each unit's weights (:func:`wanda_unit_scores`)."""

    needs = frozenset({"statistics"})

    def __call__(self, members, units):
        return wanda_unit_scores(members, units)


class FlapImportance(Importance):
    """FLAP's fluctuation of the consumers' input columns (:func:`flap_unit_scores`), with bias
    compensation by default."""

    needs = frozenset({"statistics"})
    compensates_bias = True

    def __call__(self, members, units):
        return flap_unit_scores(members, units)


_REGISTRY: dict[str, Callable] = {}


def _checked_needs(importance, what: str) -> frozenset[str]:
    needs = getattr(importance, "needs", frozenset())
    if not isinstance(needs, (set, frozenset, tuple, list)):
        raise ValueError(f"{what}.needs: expected a set of names among {NEEDS}, but got {needs!r}")
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"{what}.needs: expected some of {NEEDS}, but got {unknown[0]!r}")
    return frozenset(needs)


def register_importance(name: str, importance: Callable) -> Callable:
    """Registers ``importance`` (an :class:`Importance` or any callable(members, units) -> scores,
    see :class:`Importance`) under ``name``, so that ``StructuredConfig(method=name)`` uses it;
    returns it. A name is registered once: registering a taken name raises ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_importance: name: expected a non-empty str, but got {name!r}")
    if isinstance(importance, type):
        raise ValueError(f"register_importance: importance: expected an importance object (an instance), but got "
                         f"the class {importance.__name__}; register {importance.__name__}() instead")
    if not callable(importance):
        raise ValueError(f"register_importance: importance: expected a callable(members, units) -> scores, but got "
                         f"{type(importance).__name__}")
    _checked_needs(importance, f"register_importance: importance {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"register_importance: name: expected a name not registered yet, but {name!r} is already "
                         f"registered ({type(_REGISTRY[name]).__name__})")
    _REGISTRY[name] = importance
    return importance


def importance_names() -> tuple[str, ...]:
    """The registered importance names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def resolve_importance(method, what: str = "method") -> tuple[str, Callable]:
    """(name, importance) for a registered name or an importance object; ValueError naming ``what``
    otherwise. An unregistered object is named by its ``name`` attribute, else its function or
    class name."""
    if isinstance(method, str):
        if method not in _REGISTRY:
            raise ValueError(f"{what}: expected a registered importance name (one of {importance_names()}) or an "
                             f"importance object, but got {method!r}")
        return method, _REGISTRY[method]
    if isinstance(method, type) or not callable(method):
        raise ValueError(f"{what}: expected a registered importance name (one of {importance_names()}) or an "
                         f"importance object (callable(members, units) -> scores), but got {method!r}")
    _checked_needs(method, what)
    registered = next((n for n, imp in _REGISTRY.items() if imp is method), None)
    name = registered or getattr(method, "name", None) or getattr(method, "__name__", None) or type(method).__name__
    return str(name), method


def importance_needs(importance: Callable) -> frozenset[str]:
    """What ``importance`` declares it needs (some of ``NEEDS``)."""
    return _checked_needs(importance, "importance")


def unit_scores(members: list[MemberWeights], units: int, importance) -> torch.Tensor:
    """Scores (units,) of one channel group by ``importance`` (a registered name or an importance
    object); higher is more important. Every importance's scores are checked here: one finite
    score per unit."""
    name, importance = resolve_importance(importance, "importance")
    scores = importance(members, units)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (units,):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"importance {name!r}: expected a tensor of shape ({units},) (one score per unit), but "
                         f"got {got}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"importance {name!r}: the scores hold NaN or Inf (non-finite weights, gradients or "
                         "activations)")
    return scores.detach().cpu()


for _name, _importance in (("magnitude", MagnitudeImportance()), ("taylor", TaylorImportance()),
                           ("wanda", WandaImportance()), ("flap", FlapImportance())):
    register_importance(_name, _importance)


def select_units(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The indices (sorted ascending) of the ``keep`` highest-scoring units; ties keep the lower index."""
    units = scores.shape[0]
    if not 0 < keep <= units:
        raise ValueError(f"select_units: keep must be in [1, {units}], but got {keep}")
    # stable sort on -score: equal scores keep their index order, so lower indices win ties
    order = torch.sort(-scores.to(torch.float64), stable=True).indices
    return torch.sort(order[:keep]).values


def kept_units(units: int, ratio: float, round_to: int | None = None) -> int:
    """How many of ``units`` a group keeps when pruning a fraction ``ratio`` of them.

    ``ratio`` 0 keeps all. Otherwise the kept count is units * (1 - ratio) rounded half up, or,
    with ``round_to``, the nearest multiple of ``round_to`` (at least ``round_to``, at most the
    largest multiple not above ``units``). The result may be 0 (every unit removed) or, with
    ``round_to`` > ``units``, impossible; callers turn both into errors.
    """
    if ratio == 0:
        return units
    target = units * (1.0 - ratio)
    if round_to is None:
        return int(math.floor(target + 0.5 + 1e-9))
    largest = (units // round_to) * round_to
    if largest == 0:
        return 0
    nearest = round_to * int(math.floor(target / round_to + 0.5 + 1e-9))
    return min(max(nearest, round_to), largest)


def bias_compensation(matrix: torch.Tensor, removed_columns: torch.Tensor, input_mean: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation for a consumer losing input columns: W[:, removed] @ mean(X[removed]),
    shape (out_features,). Adding it to the consumer's bias keeps the expected output unchanged."""
    if input_mean.shape != (matrix.shape[1],):
        raise ValueError(f"bias_compensation: input_mean must have shape ({matrix.shape[1]},), but got "
                         f"{tuple(input_mean.shape)}")
    if removed_columns.numel() == 0:
        return torch.zeros(matrix.shape[0], dtype=torch.float32, device=matrix.device)
    columns = removed_columns.to(matrix.device)
    weight = matrix.detach().to(torch.float64)[:, columns]
    mean = input_mean.to(device=matrix.device, dtype=torch.float64)[columns]
    return (weight @ mean).to(torch.float32)
