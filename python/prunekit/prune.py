"""``prunekit.prune``: prune a model in place, in one call, and report what happened.

Read :func:`prune` top to bottom: select the layers and check the calibration data (the model is
not touched until all of this passed); allocate per-layer sparsities (uniform, global, OWL);
calibrate block by block (:mod:`prunekit.calibrate`; first a gradient pass when the method needs
gradients); solve each block's layers with the method (a criterion's mask or a solver's weights,
:mod:`prunekit.criteria`), refining masks with DSnoT if asked, and write the masked dense weights
back; report every layer's sparsity and reconstruction error on its calibration inputs. A run
spread over processes differs only at the strategy's seams (:mod:`prunekit.distributed`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time
import warnings
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from . import criteria
from .allocation import global_allocation, owl_layer_sparsities, uniform_allocation
from .calibrate.gradients import gradient_norms, language_model_loss
from .calibrate.hessian import hessian_quadratic_forms
from .calibrate.linear_backend import resolve_linear_backend
from .calibrate.pipeline import (INPUT_STATISTICS, CalibrationBatch, LayerInputStats, PrunableLayer,
                                 find_prunable_layers, model_device, walk_blocks)
from .calibrate.timing import StageTimer
from .distributed import SingleProcessStrategy, strategy_for
from .prune_config import PruneConfig
from .prune_report import LayerReport, PruneReport
from .solvers.admm import update_from_config
from .solvers.dsnot import dsnot
from .solvers.post_solve import PostSolve
from .solvers.magnitude import magnitude_scores

__all__ = ["prune", "PruneConfig", "PruneReport", "LayerReport"]

logger = logging.getLogger(__name__)


def prune(model: nn.Module, config: PruneConfig | None = None, calib=None) -> PruneReport:
    """Prune ``model`` in place (masked dense weights) and return a :class:`PruneReport`.

    ``calib`` is an iterable of model inputs: tensors (``model(x)``), dicts (``model(**d)``) or
    tuples (``model(*t)``); it may be None only for data-free methods (magnitude, random, or a
    criterion that needs no statistics), in which case no reconstruction error is reported. Bad
    arguments raise ValueError before the model is modified.
    """
    return _prune(model, config, calib)


def _prune(model: nn.Module, config: PruneConfig | None, calib, *, block_loader=None) -> PruneReport:
    """:func:`prune`; ``block_loader``: the blocks are streamed (see :func:`walk_blocks` and
    :func:`prunekit.prune_pretrained`)."""
    started = time.perf_counter()
    config = _checked_arguments(model, config)
    method = config.criterion
    strategy = strategy_for(config.distributed, config.process_group, argument="PruneConfig.distributed")

    with strategy.guard("checking the model, config and calibration data"):
        layers = _select_layers(model, config.ignore, config.pattern, config.sparsity)
        items = _calibration_items(calib, config)
        if items is not None:
            strategy.shard(items)  # every process needs at least one item
    strategy.agree(lambda: _run_facts(layers, items, config), "prunekit.prune")
    report = PruneReport(method=method.name, sparsity=config.sparsity if config.pattern is None else
                         f"{config.pattern[0]}:{config.pattern[1]}", allocation=config.effective_allocation,
                         refine=config.refine, sequential=config.sequential, within_block=config.within_block,
                         calibration_items=0 if items is None else len(items))

    timer = StageTimer()
    needs, error_kind = _statistics_needed(config, method)
    report.reconstruction_error_kind = error_kind if items is not None else None
    walk_items = items if (needs or _walk_needed(config)) else None  # nothing to gather: no forwards
    if walk_items is not None:
        report.linear_backend = resolve_linear_backend(
            config.linear_backend, single_process=type(strategy) is SingleProcessStrategy,
            device=config.device if config.device is not None else model_device(model),
            owner="PruneConfig.linear_backend")
    with strategy.guard("the sparsity allocation"), timer.stage("allocation"):
        sparsities = _allocate(model, layers, items, config, strategy,
                               None if block_loader is None else block_loader.reading(), timer)
    logger.info("prune: %s at %s (%s allocation) over %d layers%s", method.name, report.sparsity,
                report.allocation, len(layers), strategy.describe())

    gradients = {}
    if "gradients" in method.needs:
        with timer.stage("gradients"):
            gradients = gradient_norms(model, layers, items, config.loss_fn or _default_loss(method.name),
                                       strategy=strategy, loss_name="PruneConfig.loss_fn")
    generator = torch.Generator().manual_seed(config.seed)
    options = {option: getattr(config, option) for option in method.options}

    def solve(layer: PrunableLayer, stats: LayerInputStats | None) -> tuple[float, float] | None:
        """Prunes one layer in place; returns the numerator and denominator of its error."""
        # Where the layer's statistics are (its block ran on PruneConfig.device), else on
        # PruneConfig.device (a run without data), else where the layer is.
        device = stats.device if stats is not None else (
            torch.device(config.device) if config.device is not None else layer.weight.device)
        dense = layer.matrix().to(device=device, dtype=torch.float32)
        weight = layer.matrix().to(device=device, dtype=torch.float32)
        layer_stats = criteria.LayerStats(method.needs, criterion=method.name, layer=layer.name, inputs=stats,
                                          gradients=gradients.get(layer.name), generator=generator,
                                          device=weight.device)
        pruned = method.prune(weight, layer_stats, sparsity=None if config.pattern is not None else
                              sparsities[layer.name], pattern=config.pattern, refine=_refiner(config, layer, stats),
                              name=layer.name, options=options)
        if config.update is not None and stats is not None:  # a weight update on the method's support
            pruned = update_from_config(config, dense, pruned, stats.hessian, layer.name)
        error_terms = None
        if stats is not None and error_kind is not None:
            with timer.stage("errors"):
                error_terms = _error_terms(dense, pruned, stats, error_kind)
        layer.set_matrix(pruned, adopt=True)
        return error_terms

    # A criterion drawing random numbers takes them from one generator in layer order, so every
    # process solves every layer; so does a run without data (cheap). Otherwise the strategy may
    # spread a block's solves over processes.
    replicated = walk_items is None or "generator" in method.needs

    def timed_solve(layer: PrunableLayer, stats: LayerInputStats | None) -> tuple[float, float] | None:
        with timer.stage("solves"):
            return solve(layer, stats)

    post = PostSolve(model, refine=config.block_refine_options, compensate=config.compensate,
                     world=getattr(strategy, "world", 1))
    for what, block, step_layers, step_stats in _steps(model, layers, walk_items, config, strategy, block_loader,
                                                       post.after_block, needs, timer):
        post.before_solve(step_layers)
        terms = strategy.solve(list(step_layers), lambda name: timed_solve(step_layers[name], step_stats.get(name)),
                               weight=lambda name: step_layers[name].weight.detach(),
                               cost=lambda name: method.cost(*step_layers[name].matrix().shape),
                               replicated=replicated, what=what)
        with timer.stage("solves"):
            post.after_solve(step_layers, step_stats)
        for name, layer in step_layers.items():
            report.add_layer(name, layer.shape, layer.weight.numel(), int((layer.matrix() == 0).sum()),
                             sparsities[name], terms[name], block)

    report.block_refinement = [dataclasses.asdict(result) for result in post.refinements]
    report.compensation = post.compensation
    order = {name: i for i, name in enumerate(layers)}
    report.layers.sort(key=lambda layer: order[layer.name])
    report.seconds = time.perf_counter() - started
    report.timings = {stage: round(seconds, 4) for stage, seconds in timer.seconds.items()}
    report.timings["other"] = round(max(report.seconds - sum(timer.seconds.values()), 0.0), 4)
    report.timings["total"] = round(report.seconds, 4)
    logger.info("prune: %d/%d weights pruned (%.4f), total reconstruction error %s in %.1f s",
                report.total_pruned, report.total_params, report.total_sparsity,
                report.total_reconstruction_error, report.seconds)
    return report


# ----------------------------------------------------------------------------- checks and selection

def _checked_arguments(model, config) -> PruneConfig:
    if config is None:
        config = PruneConfig()
    if not isinstance(config, PruneConfig):
        raise ValueError(f"prune: config must be a prunekit.PruneConfig, but got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"prune: model must be a torch.nn.Module, but got {type(model).__name__}")
    return config


def _select_layers(model: nn.Module, ignore: tuple[str, ...], pattern: tuple[int, int] | None,
                   sparsity) -> dict[str, PrunableLayer]:
    """The prunable layers not ignored, not tied to a non-prunable module, fit for ``pattern``."""
    layers = find_prunable_layers(model)
    if not layers:
        raise ValueError(f"prune: the model ({type(model).__name__}) has no prunable layers (nn.Linear, "
                         "nn.Conv2d with groups=1, transformers Conv1D)")

    def ignored_by(name: str, pattern: str) -> bool:
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")

    for ignored in ignore:
        if not any(ignored_by(name, ignored) for name in layers):
            warnings.warn(f"PruneConfig.ignore: pattern {ignored!r} matches no prunable layer of "
                          f"{type(model).__name__}", UserWarning, stacklevel=3)
    selected = {name: layer for name, layer in layers.items()
                if not any(ignored_by(name, ignored) for ignored in ignore)}
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
        raise ValueError(f"prune: no prunable layers left after ignore={list(ignore)} "
                         f"(the model has {len(layers)}: {', '.join(list(layers)[:5])}...)")
    if pattern is not None:
        bad = [f"{name} ({layer.in_features})" for name, layer in selected.items() if layer.in_features % pattern[1]]
        if bad:
            raise ValueError(f"prune: sparsity {sparsity!r} needs in_features divisible by {pattern[1]}, but "
                             f"these layers are not: {', '.join(bad)}; add them to ignore")
    for name, layer in selected.items():
        if not layer.weight.dtype.is_floating_point:
            raise ValueError(f"prune: layer {name} has weight dtype {layer.weight.dtype}; expected floating point")
    return selected


def _calibration_items(calib, config: PruneConfig) -> list | None:
    if calib is None:
        if config.needs_calibration:
            raise ValueError(f"prune: calib is None, but method={config.method_name!r}, allocation="
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


def _run_facts(layers: dict[str, PrunableLayer], items: list | None, config: PruneConfig) -> dict:
    """What every process of a distributed run must agree on: the layers, the number of
    calibration items, the configuration and (a sample of) the weights."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in ("device", "progress", "process_group", "loss_fn", "method")}
    settings["method"] = config.method_name  # an object's repr holds its address, which differs
    settings["loss_fn"] = None if config.loss_fn is None else getattr(config.loss_fn, "__qualname__", "custom")
    samples = []
    for layer in layers.values():
        if layer.weight.device.type == "meta":  # streamed: not loaded yet
            continue
        flat = layer.weight.detach().reshape(-1)
        samples.append(float(flat[:: max(1, flat.numel() // 64)].to(torch.float64).sum()))
    return {"the prunable layers": [(name, layer.shape) for name, layer in layers.items()],
            "the number of calibration items": None if items is None else len(items),
            "PruneConfig": settings,
            "the weights (sampled checksums per layer)": samples}


# ----------------------------------------------------------------------------- allocation

def _allocate(model: nn.Module, layers: dict[str, PrunableLayer], items: list | None, config: PruneConfig,
              strategy: SingleProcessStrategy, block_loader=None, timer: StageTimer | None = None) -> dict[str, float]:
    allocation = config.effective_allocation
    if allocation == "uniform":
        return uniform_allocation({n: l.weight.numel() for n, l in layers.items()}, config.target_sparsity)
    if allocation == "global":  # one |W| threshold, whatever the method scores with
        scores = {name: magnitude_scores(layer.matrix()) for name, layer in layers.items()}
        return global_allocation(scores, config.target_sparsity, min_keep=config.min_keep)
    walk = walk_blocks(model, items, layers, sequential=False, device=config.device, blocks_path=config.blocks,
                       progress=config.progress, description="prunekit OWL statistics", strategy=strategy,
                       block_loader=block_loader, needs={"input_norms"}, timer=timer,
                       linear_backend=config.linear_backend)
    return owl_layer_sparsities(walk, config.target_sparsity, outlier_threshold=config.owl_threshold,
                                lam=config.owl_lambda)


# ----------------------------------------------------------------------------- calibration and solving

def _default_loss(method: str):
    def loss(model: nn.Module, batch: CalibrationBatch) -> torch.Tensor:
        return language_model_loss(model, batch, no_loss_message=(
            f"{method}: {type(model).__name__} returned no loss for labels=input_ids; pass "
            "PruneConfig(loss_fn=callable(model, batch) -> scalar loss)"))
    return loss


def _steps(model: nn.Module, layers: dict[str, PrunableLayer], items: list | None, config: PruneConfig,
           strategy: SingleProcessStrategy, block_loader=None, after_block=None,
           needs: frozenset[str] | None = None,
           timer: StageTimer | None = None) -> Iterator[tuple[str, str | None, dict, dict]]:
    """(what, block, layers, input statistics by name) per step: each block of the calibration
    walk, or every layer at once without calibration data. ``after_block``: the walk's hook after
    a block's layers are solved (block refinement)."""
    if items is None:
        if block_loader is not None:  # streamed: one block's weights at a time
            yield from block_loader.steps_without_data(layers)
            return
        yield "pruning without calibration data", None, layers, {}
        return
    for step in walk_blocks(model, items, layers, sequential=config.sequential, device=config.device,
                            blocks_path=config.blocks, progress=config.progress, strategy=strategy,
                            block_loader=block_loader, after_block=after_block, needs=needs, timer=timer,
                            within_block=config.within_block, linear_backend=config.linear_backend):
        yield f"pruning the layers of {step.name}", step.name if step.index >= 0 else None, step.layers, step.stats


def _refiner(config: PruneConfig, layer: PrunableLayer, stats: LayerInputStats | None):
    """``refine(weight, keep) -> keep`` for the criterion's masks, or None."""
    if "dsnot" not in config.refinements:
        return None

    def refine(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return dsnot(weight, keep, stats.input_mean, stats.input_var, stats.input_norms, hessian=stats.hessian,
                     pattern=config.pattern, max_cycles=config.dsnot_max_cycles, threshold=config.dsnot_threshold,
                     name=layer.name)
    return refine


def _statistics_needed(config: PruneConfig, method) -> tuple[frozenset[str], str | None]:
    """The input statistics the run reads (names of INPUT_STATISTICS) and the kind of its
    reconstruction errors ("exact", "diagonal" or None): only what the method, the refinements,
    the update and the report ask for."""
    needs = set(method.needs & INPUT_STATISTICS)
    if "dsnot" in config.refinements:
        needs |= {"input_mean", "input_var", "input_norms", "hessian"}
    if _walk_needed(config):  # DSnoT, a weight update, compensation and block refinement read H
        needs |= {"hessian"}
    kind = config.report_errors
    if kind == "auto":
        kind = "exact" if "hessian" in needs else "diagonal"
    if kind == "exact":
        needs.add("hessian")
    elif kind == "diagonal":
        needs.add("input_norms")
    return frozenset(needs), kind


def _walk_needed(config: PruneConfig) -> bool:
    """Whether the calibration walk runs for something other than input statistics."""
    return any(getattr(config, option, None) is not None for option in ("refine", "update", "compensate"))


def _error_terms(dense: torch.Tensor, pruned: torch.Tensor, stats: LayerInputStats, kind: str) -> tuple[float, float]:
    """(tr(dW H dW^T), tr(W H W^T)): ||X dW^T||^2 and ||X W^T||^2 up to the same factor 2/n;
    with ``kind`` "diagonal", H's off-diagonal entries are left out (no Hessian needed)."""
    if kind == "diagonal":
        diagonal = stats.hessian_diagonal.to(device=dense.device, dtype=torch.float32)
        delta = dense - pruned
        numerator = float((delta.square() * diagonal).sum())
        denominator = float((dense.square() * diagonal).sum())
        return max(numerator, 0.0), denominator
    numerator, denominator = hessian_quadratic_forms([dense - pruned, dense], stats.hessian)
    return max(numerator, 0.0), denominator


def __getattr__(name: str):
    # Names of the previous release, for one release.
    if name == "METHODS":
        warnings.warn("prunekit.prune.METHODS is deprecated; use prunekit.criteria.names() (registered criteria "
                      "included)", DeprecationWarning, stacklevel=2)
        return criteria.names()
    if name == "ALLOCATIONS":
        warnings.warn("prunekit.prune.ALLOCATIONS is deprecated; use prunekit.allocation.ALLOCATIONS",
                      DeprecationWarning, stacklevel=2)
        from .allocation import ALLOCATIONS
        return ALLOCATIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
