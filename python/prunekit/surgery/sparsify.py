"""``prunekit.sparsify_``: swap the pruned Linear / Conv2d / Conv1D modules of a model for
SparseLinear / SparseConv2d in place, after :func:`prunekit.prune`.

The call follows torchao's ``sparsify_(model, config, filter_fn)``: options in a
:class:`SparsifyConfig`, ``filter_fn(module, fqn) -> bool``. The call before it,
``sparsify_(model, filter_fn(name, module), format=..., break_even=..., rows=...)``, still works
for one release with a DeprecationWarning (see :func:`sparsify_` for how the two are told apart).
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ..calibrate.pipeline import is_prunable
from ..formats.semi24 import first_dense_group, layout_problem
from ..nn import FORMATS, SparseConv2d, SparseLinear
from ..nn.linear import LowRankLinear, is_hf_conv1d

AUTO_REQUEST_ATTRIBUTE = "_prunekit_auto"  # the rows / break_even of an "auto" call, on each module it decided


@dataclass(frozen=True)
class SparsifyConfig:
    """What :func:`sparsify_` does.

    - ``format``: "auto" (per module: the fastest format on its device, see
      :func:`prunekit.nn.choose_format`; modules it would keep dense are left untouched and
      listed in the report's ``kept_dense``), "2:4", "unstructured" or "dense" (every selected
      module swapped; with "2:4", a valid 2:4 weight whose shape the CUTLASS layout cannot hold,
      e.g. rows not a multiple of 32, is stored exactly as "unstructured" and listed in ``notes``).
    - ``rows``: the rows (tokens) per call the model will run, which moves the measured "auto"
      break-even (default ``prunekit.nn.DEFAULT_ROWS``: one sentence or short prompt at batch 1;
      ``rows=1`` for token-by-token decoding).
    - ``break_even``: a sparsity in [0, 1] that replaces the measured "auto" threshold.

    With "auto", each module it decides (swapped, or kept dense) records ``rows`` and
    ``break_even``; :func:`prunekit.save` keeps them, so that :func:`prunekit.load` makes the same
    choice with the table of the machine it loads on.
    """

    format: str = "auto"
    rows: int | None = None
    break_even: float | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"SparsifyConfig: argument 'format' must be one of {FORMATS}, but got {self.format!r}")
        if self.rows is not None and (isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1):
            raise ValueError(f"SparsifyConfig: argument 'rows' must be an int >= 1 or None, but got {self.rows!r}")
        if self.break_even is not None and (isinstance(self.break_even, bool)
                                            or not isinstance(self.break_even, (int, float))
                                            or not 0.0 <= self.break_even <= 1.0):
            raise ValueError(f"SparsifyConfig: argument 'break_even' must be a number in [0, 1] or None, but got "
                             f"{self.break_even!r}")


@dataclass
class SparsifyReport:
    """What :func:`sparsify_` did. JSON-serialisable (``to_json``); ``summary()`` is a table.

    ``swapped``: module name -> format of the SparseLinear/SparseConv2d now in its place;
    ``kept_dense``: name -> why "auto" left it dense (below break-even, no kernel for its
    dtype/device); ``skipped``: name -> why it was not considered (not pruned, filtered out, weight
    shared with another module, a Linear its parent reads directly); ``notes``: name -> how a
    module's storage differs from the requested format (a valid 2:4 weight whose size the 2:4
    layout cannot hold is stored, exactly, as "unstructured"); ``bytes_before`` /
    ``bytes_after``: bytes of all the model's parameters and buffers (shared storage once);
    ``swapped_bytes_before`` / ``swapped_bytes_after``: of the swapped modules only.
    """

    swapped: dict[str, str] = field(default_factory=dict)
    kept_dense: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    swapped_bytes_before: int = 0
    swapped_bytes_after: int = 0

    @property
    def ratio(self) -> float:
        """bytes_after / bytes_before of the whole model."""
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}

    def to_json(self, **kwargs) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A plain-text table: one line per module considered, then the totals."""
        lines = [f"{'module':<48} {'result':<14} note"]
        rows = [(name, fmt, self.notes.get(name, "")) for name, fmt in self.swapped.items()]
        rows += [(name, "kept dense", reason) for name, reason in self.kept_dense.items()]
        rows += [(name, "skipped", reason) for name, reason in self.skipped.items()]
        lines += [f"{name:<48} {result:<14} {note}".rstrip() for name, result, note in rows]
        return "\n".join(lines + [str(self)])

    def __str__(self) -> str:
        formats: dict[str, int] = {}
        for fmt in self.swapped.values():
            formats[fmt] = formats.get(fmt, 0) + 1
        by_format = ", ".join(f"{count} {fmt}" for fmt, count in sorted(formats.items())) or "none"
        lines = [f"sparsify_: swapped {len(self.swapped)} modules ({by_format}), kept {len(self.kept_dense)} dense, "
                 f"skipped {len(self.skipped)}",
                 f"model bytes {self.bytes_before:,} -> {self.bytes_after:,} ({self.ratio:.3f}x); swapped modules "
                 f"{self.swapped_bytes_before:,} -> {self.swapped_bytes_after:,}"]
        return "\n".join(lines)


def __getattr__(name: str):
    if name == "SparsifySummary":  # the name before SparsifyReport; one release
        warnings.warn("prunekit.surgery.SparsifySummary is deprecated: use prunekit.SparsifyReport", DeprecationWarning,
                      stacklevel=2)
        return SparsifyReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers of ``model``, each storage counted once."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor is None or tensor.device.type == "meta":
            continue
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total


def _module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _is_pruned(module: nn.Module) -> bool:
    return bool((module.weight.detach() == 0).any())


def _shared_weights(model: nn.Module) -> dict[str, str]:
    """Prunable module name -> another name holding the same weight (tied weights)."""
    owners: dict[tuple, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.device.type == "meta":
            key = ("meta", id(param))
        else:
            key = (param.device, param.untyped_storage().data_ptr())
        owners.setdefault(key, []).append(name)
    shared = {}
    for names in owners.values():
        if len(names) > 1:
            for name in names:
                if name.endswith(".weight"):
                    others = [n for n in names if n != name]
                    shared[name[: -len(".weight")]] = others[0]
    return shared


def _direct_weight_readers(model: nn.Module) -> set[str]:
    """Linear layers whose parent uses their weight tensor directly instead of calling them
    (nn.MultiheadAttention's out_proj): swapping those would break the parent."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            names.add(f"{name}.out_proj" if name else "out_proj")
    return names


def _plain_forward(module: nn.Module) -> bool:
    """The module computes exactly what its base class computes (no overridden forward)."""
    if is_hf_conv1d(module) or type(module) is LowRankLinear:  # SparseLinear carries the low-rank branch
        return True
    base = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    return type(module).forward is base.forward and (base is nn.Linear
                                                      or type(module)._conv_forward is nn.Conv2d._conv_forward)


_UNSET = object()  # tells a deprecated keyword left out from one passed (even as its old default)


def sparsify_(model: nn.Module, config: SparsifyConfig | None = None,
              filter_fn: Callable[[nn.Module, str], bool] | None = None, *, format=_UNSET, break_even=_UNSET,
              rows=_UNSET) -> SparsifyReport:
    """Swap the pruned prunable modules of ``model`` (``nn.Linear``, ``nn.Conv2d`` with
    groups=1, transformers ``Conv1D``) for :class:`~prunekit.nn.SparseLinear` /
    :class:`~prunekit.nn.SparseConv2d` holding their weights as ``config`` says
    (:class:`SparsifyConfig`; default: ``format="auto"``), in place.

    ``filter_fn(module, fqn) -> bool`` chooses among the prunable modules (``fqn``: the module's
    name in ``model``); without it, those whose weight has at least one exact zero (pruned ones).

    Modules whose weight is shared with another module (tied embeddings) and Linear layers whose
    parent reads their weight directly (``nn.MultiheadAttention.out_proj``) are skipped. Every
    module is converted before any is swapped, so an error (a module that does not fit the
    requested format) leaves the model unchanged. Returns a :class:`SparsifyReport`.

    Deprecated (one release, with a DeprecationWarning): the call before this one,
    ``sparsify_(model, filter_fn, format=..., break_even=..., rows=...)`` with
    ``filter_fn(name, module)``. A call is taken as the old one when its second argument is a
    callable instead of a SparsifyConfig, when it passes ``format``, ``break_even`` or ``rows``
    as keywords (or ``format`` as the third positional argument), or when it passes only
    ``filter_fn=f`` (no config) with ``f``'s first two parameters named ``name`` and ``module``;
    in the old call the filter is called ``f(name, module)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify_: argument 'model' must be a torch.nn.Module, but got {type(model).__name__}")
    config, selects = _resolve_call(config, filter_fn, {"format": format, "break_even": break_even, "rows": rows})
    if is_prunable(model):
        raise ValueError(f"sparsify_: argument 'model' is itself a {type(model).__name__}; sparsify_ swaps submodules "
                         "in place, so wrap it in a container or use SparseLinear/SparseConv2d.from_dense")
    candidates = [(name, module) for name, module in model.named_modules() if name and is_prunable(module)]
    if not candidates:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError("sparsify_: argument 'model' has no prunable modules (nn.Linear, nn.Conv2d with groups=1, "
                         f"transformers Conv1D), but got module types {kinds}")
    with torch.no_grad():
        return _sparsify(model, candidates, config, selects)


def _resolve_call(config, filter_fn, keywords: dict) -> tuple[SparsifyConfig, Callable[[nn.Module, str], bool] | None]:
    """The config and a filter in torchao's order (module, fqn), from a new or a deprecated call
    (see :func:`sparsify_`); a deprecated call warns once."""
    old_filter = None
    if config is not None and not isinstance(config, SparsifyConfig):
        if not callable(config):
            raise TypeError(f"sparsify_: argument 'config' must be a SparsifyConfig or None, but got "
                            f"{type(config).__name__}")
        old_filter, config = config, None
    if isinstance(filter_fn, str):  # the old third positional argument: format
        if keywords["format"] is not _UNSET:
            raise TypeError("sparsify_: got the format twice (as the third argument and as format=)")
        keywords["format"], filter_fn = filter_fn, None
    given = {key: value for key, value in keywords.items() if value is not _UNSET}
    if given and config is not None:
        raise TypeError(f"sparsify_: pass the options either as config=SparsifyConfig(...) or as the deprecated "
                        f"keywords {sorted(given)}, not both")
    if old_filter is not None and filter_fn is not None:
        raise TypeError("sparsify_: got two filters (a callable second argument and filter_fn=)")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"sparsify_: argument 'filter_fn' must be callable(module, fqn) -> bool, but got "
                        f"{type(filter_fn).__name__}")
    if old_filter is None and filter_fn is not None and (given or (config is None and _named_name_module(filter_fn))):
        old_filter, filter_fn = filter_fn, None
    deprecated = bool(given) or old_filter is not None
    config = config if config is not None else SparsifyConfig(**given)
    if deprecated:
        options = ", ".join(f"{key}={value!r}" for key, value in given.items())
        warnings.warn(f"sparsify_(model, filter_fn(name, module), format=..., break_even=..., rows=...) is deprecated "
                      f"and goes in the next release: call sparsify_(model, SparsifyConfig({options}), "
                      "filter_fn=f) with f(module, fqn) -> bool (torchao's order)", DeprecationWarning, stacklevel=3)
    if old_filter is not None:
        return config, lambda module, fqn: old_filter(fqn, module)
    return config, filter_fn


def _named_name_module(fn: Callable) -> bool:
    """Whether ``fn``'s first two parameters are named ``name`` and ``module`` (the old order)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[:2] == ["name", "module"]


def _sparsify(model: nn.Module, candidates: list, config: SparsifyConfig, selects) -> SparsifyReport:
    report = SparsifyReport(bytes_before=model_bytes(model))
    shared = _shared_weights(model)
    readers = _direct_weight_readers(model)
    replacements: dict[int, nn.Module] = {}
    for name, module in candidates:
        if id(module) in replacements:
            continue
        if name in shared:
            report.skipped[name] = f"weight shared with {shared[name]}"
            continue
        if name in readers:
            report.skipped[name] = "its parent reads the weight directly (nn.MultiheadAttention.out_proj)"
            continue
        if not _plain_forward(module):
            report.skipped[name] = f"{type(module).__name__} overrides forward"
            continue
        selected = selects(module, name) if selects is not None else _is_pruned(module)
        if not selected:
            report.skipped[name] = ("filtered out by filter_fn" if selects is not None
                                    else "not pruned (no zero weights)")
            continue
        cls = SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear
        try:
            chosen = config.format
            if chosen == "auto":
                chosen, reason = cls.auto_format(module, break_even=config.break_even, rows=config.rows)
                if chosen == "dense":
                    report.kept_dense[name] = reason
                    # what prunekit.save records, so that load makes the same "auto" choice on its machine
                    setattr(module, AUTO_REQUEST_ATTRIBUTE, {"rows": config.rows, "break_even": config.break_even})
                    continue
            if chosen == "2:4":
                problem = _semi24_layout_problem(module, cls)
                if problem is not None:  # a valid pattern the CUTLASS layout cannot hold: the bitmap holds it exactly
                    chosen = "unstructured"
                    report.notes[name] = f"stored as 'unstructured' instead of '2:4': {problem}"
            sparse = cls.from_dense(module, chosen)
        except ValueError as error:
            raise ValueError(f"sparsify_: module '{name}' ({type(module).__name__}): {error}") from error
        sparse.train(module.training)
        if config.format == "auto":
            setattr(sparse, AUTO_REQUEST_ATTRIBUTE, {"rows": config.rows, "break_even": config.break_even})
        replacements[id(module)] = sparse
        report.swapped[name] = sparse.format
        report.swapped_bytes_before += _module_bytes(module)
        report.swapped_bytes_after += _module_bytes(sparse)
    _swap_all(model, replacements)
    report.bytes_after = model_bytes(model)
    return report


def _semi24_layout_problem(module: nn.Module, cls) -> str | None:
    """Why the 2:4 layout cannot hold the module's weight for size or dtype reasons, if it has a
    valid 2:4 pattern; None otherwise (a weight that is not 2:4 at all fails in from_dense)."""
    matrix = cls._matrix(module, "sparsify_")[0]
    if matrix.shape[1] % 4 or first_dense_group(matrix) is not None:
        return None
    return layout_problem(matrix.shape[0], matrix.shape[1], matrix.dtype)


def _swap_all(model: nn.Module, replacements: dict[int, nn.Module]) -> None:
    """Replace every occurrence (shared modules included) of the replaced modules."""
    if not replacements:
        return
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
