"""The built-in methods, registered like any other: magnitude, global_magnitude, wanda, ria,
sparsegpt and admm (solvers), gblm, random. The math lives in :mod:`prunekit.solvers`."""

from __future__ import annotations

import torch

from ..solvers.admm import admm
from ..solvers.gblm import gblm_scores
from ..solvers.magnitude import magnitude_scores
from ..solvers.random import random_scores
from ..solvers.ria import ria_scores
from ..solvers.sparsegpt import sparsegpt
from ..solvers.wanda import wanda_scores
from .registry import declare, register_criterion, register_solver


@declare(needs=())
def magnitude(weight: torch.Tensor, stats) -> torch.Tensor:
    """|W|, compared across the layer."""
    return magnitude_scores(weight)


@declare(needs=(), allocation="global")
def global_magnitude(weight: torch.Tensor, stats) -> torch.Tensor:
    """|W| with one threshold across layers: magnitude under the global allocation."""
    return magnitude_scores(weight)


@declare(needs={"input_norms"}, per_row=True)
def wanda(weight: torch.Tensor, stats) -> torch.Tensor:
    """|W| * ||X||, compared within each output row."""
    return wanda_scores(weight, stats.input_norms)


@declare(needs={"input_norms"}, per_row=True, options=("ria_power",))
def ria(weight: torch.Tensor, stats, *, ria_power: float) -> torch.Tensor:
    """(|W| / row sums + |W| / column sums) * ||X||^ria_power, compared within each output row."""
    return ria_scores(weight, stats.input_norms, ria_power)


@declare(needs={"hessian"}, options=("blocksize", "percdamp"))
def sparsegpt_solve(weight: torch.Tensor, stats, *, sparsity, pattern, name, blocksize, percdamp) -> torch.Tensor:
    """OBS weight reconstruction on the layer Hessian."""
    pruned, _ = sparsegpt(weight, stats.hessian, sparsity=sparsity, pattern=pattern, blocksize=blocksize,
                          percdamp=percdamp, name=name, factor=lambda: stats.inverse_hessian_factor(percdamp))
    return pruned


def _sparsegpt_cost(out_features: int, in_features: int) -> float:
    # the column solve and the inverse-Hessian factorisation
    return float(out_features) * in_features * in_features + float(in_features) ** 3


sparsegpt_solve.extra_cost = _sparsegpt_cost


ADMM_OPTIONS = ("admm_rho", "admm_iterations", "admm_prune_iterations", "admm_pcg_iterations", "admm_percdamp",
                "admm_per_row")


def admm_arguments(options: dict) -> dict:
    """admm()'s keyword arguments from the PruneConfig fields named in ADMM_OPTIONS."""
    return {key[len("admm_"):]: value for key, value in options.items() if key in ADMM_OPTIONS}


@declare(needs={"hessian"}, options=ADMM_OPTIONS)
def admm_solve(weight: torch.Tensor, stats, *, sparsity, pattern, name, **options) -> torch.Tensor:
    """ADMM reconstruction on the layer Hessian, pruned gradually to the target."""
    pruned, _ = admm(weight, stats.hessian, sparsity=sparsity, pattern=pattern, name=name,
                     **admm_arguments(options))
    return pruned


def _admm_cost(out_features: int, in_features: int) -> float:
    # one factorisation, then about a GEMM per ADMM and conjugate-gradient step
    return 4.0 * float(in_features) ** 3 + 50.0 * float(out_features) * in_features * in_features


admm_solve.extra_cost = _admm_cost


@declare(needs={"input_norms", "gradients"}, per_row=True, options=("gblm_gradient_scale",))
def gblm(weight: torch.Tensor, stats, *, gblm_gradient_scale: float) -> torch.Tensor:
    """|W| * (scale * ||G|| + ||X||), compared within each output row."""
    return gblm_scores(weight, stats.input_norms, stats.gradients, gradient_scale=gblm_gradient_scale)


@declare(needs={"generator"})
def random(weight: torch.Tensor, stats) -> torch.Tensor:
    """Uniform scores from the run's generator (the same seed, the same masks)."""
    return random_scores(weight, stats.generator)


register_criterion("magnitude", magnitude)
register_criterion("global_magnitude", global_magnitude)
register_criterion("wanda", wanda)
register_solver("sparsegpt", sparsegpt_solve)
register_criterion("gblm", gblm)
register_criterion("random", random)
register_criterion("ria", ria)
register_solver("admm", admm_solve)
