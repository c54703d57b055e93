"""``prunekit.sparsify_``: swap the pruned Linear / Conv2d / Conv1D modules of a model for
SparseLinear / SparseConv2d in place, after :func:`prunekit.prune`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ..calibrate.pipeline import is_prunable
from ..nn import FORMATS, SparseConv2d, SparseLinear
from ..nn.linear import is_hf_conv1d


@dataclass
class SparsifySummary:
    """What :func:`sparsify_` did.

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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

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


def _is_pruned(name: str, module: nn.Module) -> bool:
    weight = module.weight.detach()
    return bool((weight == 0).any())


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
    if is_hf_conv1d(module):
        return True
    base = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    return type(module).forward is base.forward and (base is nn.Linear or type(module)._conv_forward is nn.Conv2d._conv_forward)


@torch.no_grad()
def sparsify_(model: nn.Module, filter_fn: Callable[[str, nn.Module], bool] | None = None, format: str = "auto", *,
              break_even: float | None = None, rows: int | None = None) -> SparsifySummary:
    """Swap the pruned prunable modules of ``model`` (``nn.Linear``, ``nn.Conv2d`` with
    groups=1, transformers ``Conv1D``) for :class:`~prunekit.nn.SparseLinear` /
    :class:`~prunekit.nn.SparseConv2d` holding their weights in ``format``, in place.

    - ``filter_fn(name, module) -> bool`` chooses among the prunable modules (default: those
      whose weight has at least one exact zero, i.e. pruned ones).
    - ``format``: "auto" (per module: the fastest format on its device, see
      :func:`prunekit.nn.choose_format`; modules it would keep dense are left untouched and
      listed in ``kept_dense``), "2:4", "unstructured" or "dense" (every selected module swapped;
      with "2:4", a valid 2:4 weight whose shape the CUTLASS layout cannot hold, e.g. rows not a
      multiple of 32, is stored exactly as "unstructured" and listed in ``notes``).
    - ``rows``: the rows (tokens) per call the model will run, which moves the measured "auto"
      break-even (default ``prunekit.nn.DEFAULT_ROWS``: one sentence or short prompt at batch 1;
      ``rows=1`` for token-by-token decoding); ``break_even`` overrides the threshold.

    Modules whose weight is shared with another module (tied embeddings) and Linear layers whose
    parent reads their weight directly (``nn.MultiheadAttention.out_proj``) are skipped. Every
    module is converted before any is swapped, so an error (a module that does not fit the
    requested format) leaves the model unchanged. Returns a :class:`SparsifySummary`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify_: argument 'model' must be a torch.nn.Module, but got {type(model).__name__}")
    if format not in FORMATS:
        raise ValueError(f"sparsify_: argument 'format' must be one of {FORMATS}, but got {format!r}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"sparsify_: argument 'filter_fn' must be callable(name, module) -> bool, but got "
                        f"{type(filter_fn).__name__}")
    if is_prunable(model):
        raise ValueError(f"sparsify_: argument 'model' is itself a {type(model).__name__}; sparsify_ swaps submodules "
                         "in place, so wrap it in a container or use SparseLinear/SparseConv2d.from_dense")
    candidates = [(name, module) for name, module in model.named_modules() if name and is_prunable(module)]
    if not candidates:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError("sparsify_: argument 'model' has no prunable modules (nn.Linear, nn.Conv2d with groups=1, "
                         f"transformers Conv1D), but got module types {kinds}")
    summary = SparsifySummary(bytes_before=model_bytes(model))
    shared = _shared_weights(model)
    readers = _direct_weight_readers(model)
    replacements: dict[int, nn.Module] = {}
    for name, module in candidates:
        if id(module) in replacements:
            continue
        if name in shared:
            summary.skipped[name] = f"weight shared with {shared[name]}"
            continue
        if name in readers:
            summary.skipped[name] = "its parent reads the weight directly (nn.MultiheadAttention.out_proj)"
            continue
        if not _plain_forward(module):
            summary.skipped[name] = f"{type(module).__name__} overrides forward"
            continue
        selected = filter_fn(name, module) if filter_fn is not None else _is_pruned(name, module)
        if not selected:
            summary.skipped[name] = "filtered out by filter_fn" if filter_fn is not None else "not pruned (no zero weights)"
            continue
        cls = SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear
        try:
            chosen = format
            if format == "auto":
                chosen, reason = cls.auto_format(module, break_even=break_even, rows=rows)
                if chosen == "dense":
                    summary.kept_dense[name] = reason
                    continue
            if chosen == "2:4":
                problem = _semi24_layout_problem(module, cls)
                if problem is not None:  # a valid pattern the CUTLASS layout cannot hold: the bitmap holds it exactly
                    chosen = "unstructured"
                    summary.notes[name] = f"stored as 'unstructured' instead of '2:4': {problem}"
            sparse = cls.from_dense(module, chosen)
        except ValueError as error:
            raise ValueError(f"sparsify_: module '{name}' ({type(module).__name__}): {error}") from error
        sparse.train(module.training)
        replacements[id(module)] = sparse
        summary.swapped[name] = sparse.format
        summary.swapped_bytes_before += _module_bytes(module)
        summary.swapped_bytes_after += _module_bytes(sparse)
    _swap_all(model, replacements)
    summary.bytes_after = model_bytes(model)
    return summary


def _semi24_layout_problem(module: nn.Module, cls) -> str | None:
    """Why the 2:4 layout cannot hold the module's weight for size or dtype reasons, if it has a
    valid 2:4 pattern; None otherwise (a weight that is not 2:4 at all fails in from_dense)."""
    from ..formats.semi24 import first_dense_group, layout_problem as semi24_aligned

    matrix = cls._matrix(module, "sparsify_")[0]
    if matrix.shape[1] % 4 or first_dense_group(matrix) is not None:
        return None
    return semi24_aligned(matrix.shape[0], matrix.shape[1], matrix.dtype)


def _swap_all(model: nn.Module, replacements: dict[int, nn.Module]) -> None:
    """Replace every occurrence (shared modules included) of the replaced modules."""
    if not replacements:
        return
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
