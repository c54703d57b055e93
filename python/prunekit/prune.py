"""``prunekit.prune``: prune a model in place, in one call, and report what happened.

The flow: validate the configuration, the layers and the calibration data (the model is not
touched until all of this passed); compute per-layer sparsities (uniform, global, OWL); walk the
model block by block (:mod:`prunekit.calibrate.pipeline`), pruning each block's layers with the
chosen criterion from their input statistics; optionally refine masks with DSnoT; write masked
dense weights back; measure every layer's reconstruction error on its calibration inputs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import distributed as _distributed
from .allocation import global_allocation, owl_allocation, uniform_allocation
from .calibrate.gradients import accumulate_weight_gradients, language_model_loss
from .calibrate.pipeline import CalibrationBatch, LayerInputStats, PrunableLayer, find_prunable_layers, walk_blocks
from .solvers.dsnot import dsnot
from .solvers.gblm import gblm_scores
from .solvers.magnitude import magnitude_scores
from .solvers.masks import check_sparsity, select_mask
from .solvers.patterns import parse_pattern
from .solvers.random import random_scores
from .solvers.sparsegpt import sparsegpt
from .solvers.wanda import wanda_scores

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "global_magnitude", "wanda", "sparsegpt", "gblm", "random")
DATA_FREE_METHODS = ("magnitude", "global_magnitude", "random")
ALLOCATIONS = ("uniform", "global", "owl")
REFINEMENTS = (None, "dsnot")


@dataclass
class PruneConfig:
    """What :func:`prune` does.

    - ``method``: "magnitude" (|W| per layer), "global_magnitude" (|W| with one threshold across
      layers; the same as method="magnitude", allocation="global"), "wanda" (|W| * ||X|| per
      output row), "sparsegpt" (OBS solver with weight updates), "gblm" (Wanda plus a gradient
      term; needs a loss, see ``gblm_loss``), "random".
    - ``sparsity``: a fraction in [0, 1) (unstructured) or "n:m" / (n, m): n kept of every m
      consecutive inputs (e.g. "2:4").
    - ``allocation``: "uniform" (every layer at ``sparsity``), "global" (one |W| threshold across
      all layers, each keeping at least ``min_keep``), "owl" (outlier-weighted sparsity per
      block, within ``sparsity`` +- ``owl_lambda``, outliers above ``owl_threshold`` times the
      mean of |W| * ||X||). "global" and "owl" are unstructured only.
    - ``refine``: None or "dsnot" (prune-and-grow on the masks of mask-only criteria).
    - ``ignore``: fnmatch patterns of layer names not to prune; a pattern naming a module also
      covers the layers inside it ("model.layers.0", "*.q_proj", "lm_head").
    - ``sequential``: later blocks calibrate on the pruned outputs of earlier ones (True) or on
      the dense outputs (False, one-shot).
    - ``nsamples``: use at most this many calibration items (None: all).
    - ``seed``: seeds the random criterion.
    - ``blocksize``, ``percdamp``: SparseGPT's column block size and Hessian damping.
    - ``gblm_loss``: callable(model, batch) -> scalar loss for GBLM's gradients; by default the
      model's own loss with labels = input_ids (causal LMs).
    - ``device``: where blocks run (default: where the model is); ``blocks``: the name of the
      model's block list when it is not found automatically; ``progress``: show a progress bar.
    - ``distributed``: spread the run over the ranks of a torch.distributed process group
      (``process_group``, default: the default group). None: when one with more than one rank is
      initialised; True: insist; False: never. Every rank calls :func:`prune` with the same model,
      config and ``calib``; the calibration items are sharded over the ranks, the statistics
      reduced, each block's layer solves spread over the ranks and the pruned weights broadcast,
      so every rank ends with the model a single process would produce. See
      :mod:`prunekit.distributed`.
    """

    method: str = "wanda"
    sparsity: float | str | tuple = 0.5
    allocation: str = "uniform"
    refine: str | None = None
    ignore: Sequence[str] = ()
    sequential: bool = True
    nsamples: int | None = None
    seed: int = 0
    blocksize: int = 128
    percdamp: float = 0.01
    min_keep: float = 0.01
    owl_threshold: float = 5.0
    owl_lambda: float = 0.08
    gblm_gradient_scale: float = 100.0
    gblm_loss: Callable | None = None
    dsnot_max_cycles: int = 50
    dsnot_threshold: float = 0.0
    device: str | torch.device | None = None
    blocks: str | None = None
    progress: bool = True
    distributed: bool | None = None
    process_group: object | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"PruneConfig.method: expected one of {', '.join(METHODS)}, but got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"PruneConfig.allocation: expected one of {', '.join(ALLOCATIONS)}, "
                             f"but got {self.allocation!r}")
        if self.refine not in REFINEMENTS:
            raise ValueError(f"PruneConfig.refine: expected None or 'dsnot', but got {self.refine!r}")
        if isinstance(self.ignore, str):
            self.ignore = (self.ignore,)
        self.ignore = tuple(self.ignore)
        if self.pattern is None:
            self.sparsity = check_sparsity(self.sparsity, "PruneConfig.sparsity")
        elif self.effective_allocation != "uniform":
            raise ValueError(f"PruneConfig.allocation: {self.effective_allocation!r} allocation needs an "
                             f"unstructured sparsity, but got the N:M pattern {self.sparsity!r}")
        if self.refine == "dsnot" and self.method == "sparsegpt":
            raise ValueError("PruneConfig.refine: 'dsnot' refines the masks of mask-only criteria (magnitude, "
                             "global_magnitude, wanda, gblm, random); sparsegpt updates weights, so it cannot be "
                             "combined with dsnot")
        if self.nsamples is not None and self.nsamples < 1:
            raise ValueError(f"PruneConfig.nsamples: expected None or >= 1, but got {self.nsamples}")
        if self.blocksize < 1:
            raise ValueError(f"PruneConfig.blocksize: expected >= 1, but got {self.blocksize}")
        if self.percdamp < 0:
            raise ValueError(f"PruneConfig.percdamp: expected >= 0, but got {self.percdamp}")
        if self.distributed not in (None, True, False):
            raise ValueError(f"PruneConfig.distributed: expected None, True or False, but got {self.distributed!r}")

    @property
    def pattern(self) -> tuple[int, int] | None:
        """(n, m) when ``sparsity`` is an N:M pattern, else None."""
        if isinstance(self.sparsity, (str, tuple, list)):
            try:
                return parse_pattern(self.sparsity)
            except ValueError as error:
                raise ValueError(f"PruneConfig.sparsity: expected a fraction in [0, 1) or 'n:m', but got "
                                 f"{self.sparsity!r} ({error})") from None
        return None

    @property
    def target_sparsity(self) -> float:
        nm = self.pattern
        return 1 - nm[0] / nm[1] if nm is not None else float(self.sparsity)

    @property
    def effective_allocation(self) -> str:
        return "global" if self.method == "global_magnitude" else self.allocation

    @property
    def needs_calibration(self) -> bool:
        return (self.method not in DATA_FREE_METHODS or self.effective_allocation == "owl"
                or self.refine is not None)


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]
    numel: int
    target_sparsity: float
    sparsity: float
    reconstruction_error: float | None
    """||X W^T - X W_s^T||^2 / ||X W^T||^2 over the layer's calibration inputs (None without data)."""
    block: str | None = None


@dataclass
class PruneReport:
    """What :func:`prune` did: per layer and in total. JSON-serialisable (``to_json``)."""

    method: str
    sparsity: float | str
    allocation: str
    refine: str | None
    sequential: bool
    layers: list[LayerReport] = field(default_factory=list)
    calibration_items: int = 0
    seconds: float = 0.0
    _error_sums: list = field(default_factory=lambda: [0.0, 0.0], repr=False)

    @property
    def total_params(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def total_pruned(self) -> int:
        return sum(round(layer.sparsity * layer.numel) for layer in self.layers)

    @property
    def total_sparsity(self) -> float:
        return self.total_pruned / self.total_params if self.total_params else 0.0

    @property
    def total_reconstruction_error(self) -> float | None:
        """sum over layers of ||dW X||^2 / sum of ||W X||^2 (None without calibration data)."""
        numerator, denominator = self._error_sums
        if not any(layer.reconstruction_error is not None for layer in self.layers) or denominator == 0:
            return None
        return numerator / denominator

    @property
    def mean_reconstruction_error(self) -> float | None:
        errors = [layer.reconstruction_error for layer in self.layers if layer.reconstruction_error is not None]
        return sum(errors) / len(errors) if errors else None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "allocation": self.allocation,
            "refine": self.refine,
            "sequential": self.sequential,
            "calibration_items": self.calibration_items,
            "seconds": self.seconds,
            "total_params": self.total_params,
            "total_pruned": self.total_pruned,
            "total_sparsity": self.total_sparsity,
            "total_reconstruction_error": self.total_reconstruction_error,
            "mean_reconstruction_error": self.mean_reconstruction_error,
            "layers": [dataclasses.asdict(layer) | {"shape": list(layer.shape)} for layer in self.layers],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A plain-text table: one line per layer, then the totals."""
        lines = [f"{'layer':<48} {'shape':>16} {'target':>7} {'sparsity':>8} {'rel. error':>10}"]
        for layer in self.layers:
            error = "-" if layer.reconstruction_error is None else f"{layer.reconstruction_error:.4g}"
            lines.append(f"{layer.name:<48} {'x'.join(map(str, layer.shape)):>16} {layer.target_sparsity:>7.4f} "
                         f"{layer.sparsity:>8.4f} {error:>10}")
        total_error = self.total_reconstruction_error
        lines.append(f"total: {self.total_pruned}/{self.total_params} pruned ({self.total_sparsity:.4f}), "
                     f"reconstruction error {'-' if total_error is None else f'{total_error:.4g}'}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- layer selection

def _select_layers(model: nn.Module, config: PruneConfig) -> dict[str, PrunableLayer]:
    layers = find_prunable_layers(model)
    if not layers:
        raise ValueError(f"prune: the model ({type(model).__name__}) has no prunable layers (nn.Linear, "
                         "nn.Conv2d with groups=1, transformers Conv1D)")

    def ignored_by(name: str, pattern: str) -> bool:
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")

    for pattern in config.ignore:
        if not any(ignored_by(name, pattern) for name in layers):
            warnings.warn(f"PruneConfig.ignore: pattern {pattern!r} matches no prunable layer of "
                          f"{type(model).__name__}", UserWarning, stacklevel=3)
    selected = {name: layer for name, layer in layers.items()
                if not any(ignored_by(name, pattern) for pattern in config.ignore)}
    # A weight shared with a non-prunable module (an LM head tied to the embeddings) is skipped:
    # pruning it would prune the embedding table too.
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners.setdefault(id(weight), []).append(module_name)
    for name in list(selected):
        sharing = [other for other in owners.get(id(selected[name].weight), []) if other != name]
        if any(other not in layers for other in sharing):
            logger.info("prune: skipping %s, whose weight is tied to %s", name, ", ".join(sharing))
            del selected[name]
    if not selected:
        raise ValueError(f"prune: no prunable layers left after ignore={list(config.ignore)} "
                         f"(the model has {len(layers)}: {', '.join(list(layers)[:5])}...)")
    nm = config.pattern
    if nm is not None:
        bad = [f"{name} ({layer.in_features})" for name, layer in selected.items() if layer.in_features % nm[1]]
        if bad:
            raise ValueError(f"prune: sparsity {config.sparsity!r} needs in_features divisible by {nm[1]}, but "
                             f"these layers are not: {', '.join(bad)}; add them to ignore")
    for name, layer in selected.items():
        if not layer.weight.dtype.is_floating_point:
            raise ValueError(f"prune: layer {name} has weight dtype {layer.weight.dtype}; expected floating point")
    return selected


def _calibration_list(calib, config: PruneConfig) -> list | None:
    if calib is None:
        if config.needs_calibration:
            raise ValueError(f"prune: calib is None, but method={config.method!r}, allocation="
                             f"{config.effective_allocation!r}, refine={config.refine!r} needs calibration data")
        return None
    if isinstance(calib, (torch.Tensor, dict)):
        items = [calib]
    elif isinstance(calib, Iterable):
        items = list(calib)
    else:
        raise ValueError(f"prune: calib must be an iterable of model inputs (tensors or dicts), but got "
                         f"{type(calib).__name__}")
    if config.nsamples is not None:
        items = items[: config.nsamples]
    if not items:
        raise ValueError("prune: calib is empty; expected at least one calibration input")
    for index, item in enumerate(items):
        CalibrationBatch.from_item(item, index)  # type check
    return items


# ----------------------------------------------------------------------------- GBLM gradients

def _default_loss(model: nn.Module, batch: CalibrationBatch) -> torch.Tensor:
    return language_model_loss(model, batch, no_loss_message=(
        f"gblm: {type(model).__name__} returned no loss for labels=input_ids; pass "
        "PruneConfig(gblm_loss=callable(model, batch) -> scalar loss)"))


def _gradient_norms(model: nn.Module, layers: dict[str, PrunableLayer], items: list,
                    config: PruneConfig, context: _distributed.Context | None = None) -> dict[str, torch.Tensor]:
    """||G|| over the calibration items of every layer's weight gradient, as (out, in) matrices.
    Distributed: each rank takes its share of the items and the squared gradients are summed."""
    if context is None:
        return _gradient_norms_local(model, layers, list(enumerate(items)), config)
    with context.guard("the GBLM gradient pass"):
        norms = _gradient_norms_local(model, layers, context.shard(list(enumerate(items))), config, sqrt=False)
    for name, squares in norms.items():
        context.all_reduce_sum_(squares, what=f"the gradient reduction of layer {name}")
    return {name: squares.sqrt() for name, squares in norms.items()}


def _gradient_norms_local(model: nn.Module, layers: dict[str, PrunableLayer], items: list[tuple[int, object]],
                          config: PruneConfig, sqrt: bool = True) -> dict[str, torch.Tensor]:
    squares = {name: torch.zeros(layer.matrix().shape, dtype=torch.float32, device=layer.weight.device)
               for name, layer in layers.items()}

    def accumulate(name: str, grad: torch.Tensor) -> None:
        layer = layers[name]
        squares[name] += (grad.t() if layer.kind == "conv1d" else grad.reshape(grad.shape[0], -1)).square()

    accumulate_weight_gradients(model, {name: layer.weight for name, layer in layers.items()}, items,
                                config.gblm_loss or _default_loss, accumulate, loss_name="gblm loss")
    return {name: s.sqrt() for name, s in squares.items()} if sqrt else squares


# ----------------------------------------------------------------------------- allocations

def _layer_sparsities(model, layers, items, config, context=None) -> dict[str, float]:
    allocation = config.effective_allocation
    if allocation == "uniform":
        return uniform_allocation({n: l.weight.numel() for n, l in layers.items()}, config.target_sparsity)
    if allocation == "global":
        scores = {name: magnitude_scores(layer.matrix()) for name, layer in layers.items()}
        return global_allocation(scores, config.target_sparsity, min_keep=config.min_keep)
    # OWL: a dense one-shot pass gathers |W| * ||X|| per block; every layer takes its block's sparsity.
    group_scores: dict[str, list[torch.Tensor]] = {}
    group_sizes: dict[str, int] = {}
    group_of: dict[str, str] = {}
    walk = walk_blocks(model, items, layers, sequential=False, device=config.device, blocks_path=config.blocks,
                       progress=config.progress, description="prunekit OWL statistics", context=context)
    for step in walk:
        for name, layer in step.layers.items():
            # Without a block list every layer is its own group.
            group = step.name if step.index >= 0 else name
            score = wanda_scores(layer.matrix(), step.stats[name].input_norms).cpu()
            group_scores.setdefault(group, []).append(score)
            group_sizes[group] = group_sizes.get(group, 0) + layer.weight.numel()
            group_of[name] = group
    group_sparsity = owl_allocation(group_scores, config.target_sparsity, outlier_threshold=config.owl_threshold,
                                    lam=config.owl_lambda, group_sizes=group_sizes)
    return {name: group_sparsity[group_of[name]] for name in layers}


# ----------------------------------------------------------------------------- per layer

def _prune_layer(layer: PrunableLayer, stats: LayerInputStats | None, sparsity: float, config: PruneConfig,
                 gradient_norms: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """New (out, in) fp32 matrix of ``layer`` under ``config`` (the layer is not modified)."""
    weight = layer.matrix().to(torch.float32)
    pattern = config.pattern
    target = None if pattern is not None else sparsity
    method = config.method
    name = layer.name
    if method == "sparsegpt":
        pruned, _ = sparsegpt(weight, stats.hessian, sparsity=target, pattern=pattern,
                              blocksize=config.blocksize, percdamp=config.percdamp, name=name)
        return pruned.to(torch.float32)
    per_row = method in ("wanda", "gblm")
    if method in ("magnitude", "global_magnitude"):
        scores = magnitude_scores(weight)
    elif method == "random":
        scores = random_scores(weight, generator)
    elif method == "wanda":
        scores = wanda_scores(weight, stats.input_norms)
    else:
        scores = gblm_scores(weight, stats.input_norms, gradient_norms.to(weight.device),
                             gradient_scale=config.gblm_gradient_scale)
    keep = select_mask(scores, sparsity=target, pattern=pattern, per_row=per_row, name=name)
    if config.refine == "dsnot":
        keep = dsnot(weight, keep, stats.input_mean, stats.input_var, stats.input_norms, hessian=stats.hessian,
                     pattern=pattern,
                     max_cycles=config.dsnot_max_cycles, threshold=config.dsnot_threshold, name=name)
    return weight * keep


def _relative_error(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> tuple[float, float]:
    """(tr(dW H dW^T), tr(W H W^T)): ||X dW^T||^2 and ||X W^T||^2 up to the same factor 2/n."""
    hessian = hessian.to(torch.float32)
    delta = dense - pruned
    numerator = float(((delta @ hessian) * delta).sum())
    denominator = float(((dense @ hessian) * dense).sum())
    return max(numerator, 0.0), denominator


# ----------------------------------------------------------------------------- distribution

def _solve_cost(layer: PrunableLayer, config: PruneConfig) -> float:
    """Relative cost of pruning ``layer`` (for spreading a block's layers over ranks): the error
    tr(dW H dW^T) is out * in^2 for every method; SparseGPT adds its solve (out * in^2 + in^3)."""
    out_features, in_features = layer.matrix().shape
    cost = float(out_features) * in_features * in_features
    if config.method == "sparsegpt":
        cost += float(out_features) * in_features * in_features + float(in_features) ** 3
    return cost


def _run_facts(layers: dict[str, PrunableLayer], items: list | None, config: PruneConfig) -> dict:
    """What every rank of a distributed run must agree on: the layers, the number of calibration
    items, the configuration and (a sample of) the weights."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in ("device", "progress", "process_group", "gblm_loss")}
    settings["gblm_loss"] = None if config.gblm_loss is None else getattr(config.gblm_loss, "__qualname__", "custom")
    samples = []
    for layer in layers.values():
        flat = layer.weight.detach().reshape(-1)
        samples.append(float(flat[:: max(1, flat.numel() // 64)].to(torch.float64).sum()))
    return {"the prunable layers": [(name, layer.shape) for name, layer in layers.items()],
            "the number of calibration items": None if items is None else len(items),
            "PruneConfig": settings,
            "the weights (sampled checksums per layer)": samples}


# ----------------------------------------------------------------------------- entry point

def prune(model: nn.Module, config: PruneConfig | None = None, calib=None) -> PruneReport:
    """Prune ``model`` in place (masked dense weights) and return a :class:`PruneReport`.

    ``calib`` is an iterable of model inputs: tensors (``model(x)``), dicts (``model(**d)``) or
    tuples (``model(*t)``); it may be None only for data-free methods (magnitude, random), in
    which case no reconstruction error is reported. Bad arguments raise ValueError before the
    model is modified.
    """
    started = time.perf_counter()
    if config is None:
        config = PruneConfig()
    if not isinstance(config, PruneConfig):
        raise ValueError(f"prune: config must be a prunekit.PruneConfig, but got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"prune: model must be a torch.nn.Module, but got {type(model).__name__}")
    context = _distributed.Context.resolve(config.distributed, config.process_group)
    with _distributed.guard(context, "checking the model, config and calibration data"):
        layers = _select_layers(model, config)
        items = _calibration_list(calib, config)
        if context is not None and items is not None and len(items) < context.world:
            raise ValueError(f"prune: calib: distributed calibration over {context.world} ranks needs at least one "
                             f"item per rank, but got {len(items)} items")
    if context is not None:
        context.agree(_run_facts(layers, items, config), "prunekit.prune")
    report = PruneReport(method=config.method, sparsity=config.sparsity if config.pattern is None else
                         f"{config.pattern[0]}:{config.pattern[1]}", allocation=config.effective_allocation,
                         refine=config.refine, sequential=config.sequential,
                         calibration_items=0 if items is None else len(items))
    gradient_norms = _gradient_norms(model, layers, items, config, context) if config.method == "gblm" else {}
    with _distributed.guard(context, "the sparsity allocation"):
        sparsities = _layer_sparsities(model, layers, items, config, context)
    generator = torch.Generator().manual_seed(config.seed)
    logger.info("prune: %s at %s (%s allocation) over %d layers%s", config.method, report.sparsity,
                report.allocation, len(layers), "" if context is None else
                f" (rank {context.rank} of {context.world}, {context.backend})")

    def solve(layer: PrunableLayer, stats: LayerInputStats | None) -> tuple[float, float] | None:
        """Prunes one layer in place; returns the numerator and denominator of its error."""
        dense = layer.matrix().to(torch.float32)
        pruned = _prune_layer(layer, stats, sparsities[layer.name], config, gradient_norms.get(layer.name), generator)
        error_terms = None if stats is None else _relative_error(dense, pruned, stats.hessian)
        layer.set_matrix(pruned)
        return error_terms

    def record(layer: PrunableLayer, error_terms: tuple[float, float] | None, block: str | None) -> None:
        error = None
        if error_terms is not None:
            numerator, denominator = error_terms
            error = numerator / denominator if denominator > 0 else 0.0
            report._error_sums[0] += numerator
            report._error_sums[1] += denominator
        zeros = int((layer.matrix() == 0).sum())
        report.layers.append(LayerReport(layer.name, layer.shape, layer.weight.numel(), sparsities[layer.name],
                                         zeros / layer.weight.numel(), error, block))

    # The random criterion draws from one generator in layer order: every rank computes every
    # layer (cheap, identical); the other methods split each block's layers over the ranks.
    parallel = context is not None and config.method != "random"
    if items is None:
        with _distributed.guard(context, "pruning without calibration data"):
            for layer in layers.values():
                record(layer, solve(layer, None), None)
    else:
        for step in walk_blocks(model, items, layers, sequential=config.sequential, device=config.device,
                                blocks_path=config.blocks, progress=config.progress, context=context):
            block = step.name if step.index >= 0 else None
            if not parallel:
                with _distributed.guard(context, f"pruning the layers of {step.name}"):
                    for layer in step.layers.values():
                        record(layer, solve(layer, step.stats[layer.name]), block)
                continue
            names = list(step.layers)
            owners = context.assign({name: _solve_cost(step.layers[name], config) for name in names})
            terms = torch.zeros(len(names), 2, dtype=torch.float64)
            with context.guard(f"pruning the layers of {step.name}"):
                for i, name in enumerate(names):
                    if owners[name] == context.rank:
                        terms[i] = torch.tensor(solve(step.layers[name], step.stats[name]), dtype=torch.float64)
            for name in names:  # the pruned weights, from the rank that solved each
                context.broadcast_(step.layers[name].weight.detach(), owners[name],
                                   what=f"the broadcast of {name}'s pruned weight from rank {owners[name]}")
            context.all_reduce_sum_(terms, what=f"the reconstruction errors of {step.name}")
            for i, name in enumerate(names):
                record(step.layers[name], (float(terms[i, 0]), float(terms[i, 1])), block)
    order = {name: i for i, name in enumerate(layers)}
    report.layers.sort(key=lambda layer: order[layer.name])
    report.seconds = time.perf_counter() - started
    logger.info("prune: %d/%d weights pruned (%.4f), total reconstruction error %s in %.1f s",
                report.total_pruned, report.total_params, report.total_sparsity,
                report.total_reconstruction_error, report.seconds)
    return report
