"""What :func:`prunekit.prune` runs after a step's layers are solved: low-rank compensation
(``compensate=LowRank(...)``, :mod:`prunekit.solvers.lowrank`) and then block refinement
(``refine="block"``, :mod:`prunekit.solvers.block_refine`).

Order: the layers are solved; each pruned ``nn.Linear`` whose ``W - W_s`` (dense minus solved
weights) is compensated is replaced by a :class:`~prunekit.nn.LowRankLinear` sharing its weight;
a block step is then refined (inside the calibration walk, which holds the block's inputs and its
dense outputs, before the next block's inputs are computed) with the low-rank factors training
beside the kept weights, so the next block sees the compensated, refined outputs (sequential
mode). Compensating after the refinement would pull each layer back towards its own dense output
and undo what the refinement fitted across the block. Only one block's dense weights are kept at a
time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn as nn

from ..nn.linear import LowRankLinear
from ..recovery import is_normalisation
from .block_refine import BlockRefineResult, refine_block
from .lowrank import LowRank, eigenspace, eora_factors, lowrank_error_terms

logger = logging.getLogger(__name__)

__all__ = ["PostSolve"]


class PostSolve:
    """Block refinement and low-rank compensation around the solves of one :func:`prune` run.

    ``before_solve(layers)`` keeps the dense weights a compensation needs; ``after_solve(layers,
    stats)`` compensates; ``after_block`` is the calibration walk's hook (None without
    block refinement), which refines the block's kept weights and low-rank factors. ``refinements`` and
    ``compensation`` hold what was done, by block and by layer."""

    def __init__(self, model: nn.Module, *, refine: dict | None, compensate: LowRank | None, world: int = 1):
        """``refine``: :func:`~prunekit.solvers.block_refine.refine_block`'s options (steps, lr,
        validation, batch, validate_every, autocast) and ``norms`` (train the block's
        normalisation weights too), or None without block refinement."""
        if refine is not None and world > 1:
            raise ValueError(f"PruneConfig.refine: 'block' runs in one process, but the run is spread over {world} "
                             "ranks; prune with distributed=False")
        self.model = model
        self.refine = None if refine is None else dict(refine)
        self.norms = False if refine is None else bool(self.refine.pop("norms", False))
        self.lowrank = compensate
        self.dense: dict[str, torch.Tensor] = {}
        self.refinements: list[BlockRefineResult] = []
        self.compensation: dict[str, dict] = {}

    @property
    def after_block(self):
        return self._after_block if self.refine is not None else None

    def before_solve(self, layers: Mapping) -> None:
        if self.lowrank is not None:
            self.dense = {name: layer.matrix().to(torch.float32).clone() for name, layer in layers.items()}

    def after_solve(self, layers: Mapping, stats: Mapping) -> None:
        self._compensate(layers, stats)

    def _after_block(self, step, block_module: nn.Module, inputs, targets) -> None:
        weights = {name: layer.weight for name, layer in step.layers.items()}
        factors = {f"{name}.{factor}": getattr(layer.module, factor) for name, layer in step.layers.items()
                   if isinstance(layer.module, LowRankLinear) for factor in ("lowrank_a", "lowrank_b")}
        if self.norms:
            factors.update(normalisation_parameters(block_module))
        self.refinements.append(refine_block(block_module, weights, inputs, targets, name=step.name, free=factors,
                                             **self.refine))

    def _compensate(self, layers: Mapping, stats: Mapping) -> None:
        if self.lowrank is None:
            return
        eigen_by_input: list[tuple[torch.Tensor, tuple]] = []  # q/k/v (gate/up) share their input's eigenspace
        for name, layer in layers.items():
            dense = self.dense.pop(name)
            module = layer.module
            if layer.kind != "linear" or not isinstance(module, nn.Linear):
                self.compensation[name] = {"rank": 0, "note": f"{type(module).__name__} layers are not compensated"}
                continue
            if isinstance(module, LowRankLinear):
                raise ValueError(f"PruneConfig.compensate: layer {name} already has a low-rank branch (rank "
                                 f"{module.rank}); prune the model it came from, or sparsify_ it first")
            rank = self.lowrank.rank_for(*dense.shape, name)
            if rank == 0:
                self.compensation[name] = {"rank": 0, "note": f"a budget of {self.lowrank.budget} allows rank 0"}
                continue
            layer_stats = stats.get(name)
            if layer_stats is None:
                raise ValueError(f"PruneConfig.compensate: layer {name} has no calibration statistics; low-rank "
                                 "compensation needs calibration data")
            hessian = layer_stats.hessian
            eigen = next((found for seen, found in eigen_by_input if torch.equal(seen, hessian)), None)
            if eigen is None:
                eigen = eigenspace(hessian, self.lowrank.eigenvalue_floor, name)
                eigen_by_input.append((hessian, eigen))
            pruned = layer.matrix().to(device=dense.device, dtype=torch.float32)
            factor_a, factor_b = eora_factors(dense, pruned, hessian, rank, name=name,
                                              eigenvalue_floor=self.lowrank.eigenvalue_floor, eigen=eigen)
            before, norm = lowrank_error_terms(dense, pruned, hessian)
            after, _ = lowrank_error_terms(dense, pruned + factor_b.double() @ factor_a.double(), hessian)
            replacement = LowRankLinear.from_linear(module, factor_a, factor_b)
            _replace(self.model, module, replacement)
            layer.module = replacement
            element = module.weight.element_size()
            self.compensation[name] = {
                "rank": rank, "bytes": rank * sum(dense.shape) * element,
                "dense_bytes": dense.numel() * element,
                "error_before": before / norm if norm > 0 else 0.0, "error_after": after / norm if norm > 0 else 0.0}


def normalisation_parameters(block: nn.Module) -> dict[str, nn.Parameter]:
    """The weights and biases of ``block``'s normalisation layers
    (:func:`prunekit.recovery.is_normalisation`), by qualified name."""
    found = {}
    for module_name, module in block.named_modules():
        if is_normalisation(module):
            for parameter_name, parameter in module.named_parameters(recurse=False):
                found[f"{module_name}.{parameter_name}" if module_name else parameter_name] = parameter
    return found


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Puts ``new`` everywhere ``old`` is registered in ``model``."""
    replaced = False
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is old:
                setattr(parent, child_name, new)
                replaced = True
    if not replaced:
        raise ValueError(f"PruneConfig.compensate: could not find the {type(old).__name__} to replace in the model")
