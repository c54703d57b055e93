"""Per-layer pruning math: each solver takes a layer's weight and calibration statistics and
returns the pruned weight and its keep-mask."""

from .sparsegpt import inverse_hessian_factor, sparsegpt
from .patterns import parse_pattern
from .masks import check_sparsity, select_mask
from .magnitude import magnitude, magnitude_scores
from .wanda import input_norms_from_hessian, wanda, wanda_scores
from .gblm import gblm, gblm_scores
from .random import random, random_scores
from .dsnot import dsnot

__all__ = ["inverse_hessian_factor", "parse_pattern", "sparsegpt"]
__all__ += ["check_sparsity", "select_mask", "magnitude", "magnitude_scores", "input_norms_from_hessian", "wanda",
            "wanda_scores", "gblm", "gblm_scores", "random", "random_scores", "dsnot"]
