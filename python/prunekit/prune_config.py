"""``PruneConfig``: what :func:`prunekit.prune` does, checked when it is built."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, fields

import torch

from . import criteria
from ._names import dtype_name
from .allocation import ALLOCATIONS
from .calibrate.linear_backend import LINEAR_BACKENDS
from .calibrate.pipeline import WITHIN_BLOCK
from .solvers.admm import check_admm_options
from .solvers.block_refine import check_block_refine_options
from .solvers.lowrank import LowRank
from .solvers.masks import check_sparsity
from .solvers.patterns import parse_pattern
from .solvers.ria import check_power

REFINEMENTS = (None, "dsnot", "block")  # and ("dsnot", "block"): masks refined, then the block
UPDATES = (None, "admm")
REPORT_ERRORS = ("auto", "exact", "diagonal", None)


@dataclass
class PruneConfig:
    """What :func:`prune` does.

    - ``method``: a registered name or a criterion object (see :mod:`prunekit.criteria` and
      :func:`prunekit.register_criterion`). Built in: "magnitude" (|W| per layer),
      "global_magnitude" (|W| with one threshold across layers; the same as method="magnitude",
      allocation="global"), "wanda" (|W| * ||X|| per output row), "sparsegpt" (OBS solver with
      weight updates), "gblm" (Wanda plus a gradient term; needs a loss, see ``loss_fn``),
      "random".
    - ``sparsity``: a fraction in [0, 1) (unstructured) or "n:m" / (n, m): n kept of every m
      consecutive inputs (e.g. "2:4").
    - ``allocation``: "uniform" (every layer at ``sparsity``), "global" (one |W| threshold across
      all layers, each keeping at least ``min_keep``), "owl" (outlier-weighted sparsity per
      block, within ``sparsity`` +- ``owl_lambda``, outliers above ``owl_threshold`` times the
      mean of |W| * ||X||). "global" and "owl" are unstructured only.
    - ``refine``: None, "dsnot" (prune-and-grow on the masks of criteria; not for solvers),
      "block" (after a block's layers are solved, ``block_refine_steps`` Adam steps at
      ``block_refine_lr`` on the weights they kept, masks fixed, towards the dense block's outputs
      on the calibration inputs; the step with the lowest error on the held-out share
      ``block_refine_validation`` of the items, measured every ``block_refine_validate_every``
      steps, is kept; ``block_refine_batch`` sequences per step (None: one calibration item);
      ``block_refine_norms`` trains the block's normalisation weights too;
      ``block_refine_autocast`` ("bfloat16" or "float16") runs the steps' forward and backward in
      that dtype under ``torch.autocast``; any method; one process), or ("dsnot", "block"): both,
      in that order. See :mod:`prunekit.solvers.block_refine`.
    - ``compensate``: None, or a :class:`prunekit.LowRank` (an int r is ``LowRank(rank=r)``):
      after pruning (and refinement), each pruned ``nn.Linear`` gets a rank-r correction of its
      error fitted in the eigenspace of its calibration inputs (EoRA) and becomes a
      :class:`prunekit.nn.LowRankLinear`, which :func:`prunekit.sparsify_` turns into a
      SparseLinear carrying the factors. ``LowRank(budget=0.05)`` sizes each layer's rank to 5%
      of its dense weight bytes. See :mod:`prunekit.solvers.lowrank`.
    - ``ignore``: fnmatch patterns of layer names not to prune; a pattern naming a module also
      covers the layers inside it ("model.layers.0", "*.q_proj", "lm_head").
    - ``sequential``: later blocks calibrate on the pruned outputs of earlier ones (True) or on
      the dense outputs (False, one-shot).
    - ``within_block``: how the layers of one block calibrate. "parallel" (default): every layer
      on the dense block's forward, then the block runs again, pruned, for the next block's
      inputs (the reference Wanda and SparseGPT). "sequential": each group of layers reading one
      input (q/k/v, o, gate/up, down) calibrates on inputs through the block's layers pruned
      before it, and the block runs once (GPTQ's "true sequential"): about 40% fewer forward
      FLOPs; every item's intermediate activations of one block are held at once. Needs
      ``sequential`` and neither block refinement nor compensation.
    - ``linear_backend``: the GEMM library of the calibration forwards' fp32 CPU linears:
      "aten" (torch's BLAS, MKL in the x86 wheels), "onednn", or "auto" (default): oneDNN where
      a measurement once per process finds it clearly faster (MKL runs AVX2 kernels on AMD's
      AVX-512 CPUs, at about half oneDNN's speed), else ATen; ATen in distributed runs. The
      statistics differ by float rounding only. See :mod:`prunekit.calibrate.linear_backend`.
    - ``nsamples``: use at most this many calibration items (None: all).
    - ``seed``: seeds the generator of criteria that draw random numbers ("random").
    - ``blocksize``, ``percdamp``: SparseGPT's column block size and Hessian damping.
    - ``update``: None, or "admm": after the method's mask, reconstruct the kept weights by ADMM
      on the fixed support (minimising ||X W^T - X W_s^T||^2; e.g. method="ria", update="admm").
    - ``admm_rho``, ``admm_iterations``, ``admm_prune_iterations``, ``admm_pcg_iterations``,
      ``admm_percdamp``, ``admm_per_row``: the ADMM solver's options (method="admm" and
      update="admm"): the penalty rho relative to the scaled Hessian's unit diagonal, the ADMM
      steps, those of them (at most all) along which the sparsity rises (cubic schedule;
      method="admm" only),
      the conjugate-gradient steps on the final support, the ridge damping relative to the
      diagonal (larger stays closer to the dense weights: a regulariser when the calibration text
      is unlike the text the model will see) and whether unstructured masks compare weights per
      output row. See :mod:`prunekit.solvers.admm`.
    - ``ria_power``: the exponent of ||X|| in RIA's score (method="ria"; the paper's 0.5).
    - ``loss_fn``: callable(model, batch) -> scalar loss for the gradients of criteria that need
      them (gblm); by default the model's own loss with labels = input_ids (causal LMs).
      ``gblm_loss`` is its deprecated name (one release, with a DeprecationWarning).
    - ``device``: where blocks run (default: where the model is); ``blocks``: the name of the
      model's block list when it is not found automatically; ``progress``: show a progress bar.
    - ``report_errors``: the per-layer reconstruction errors of the report: "exact" (from each
      input's Hessian, built for this if the method needs none), "diagonal" (an estimate from the
      Hessian's diagonal, as if input features were uncorrelated: nearly free), None (none), or
      "auto" (default): "exact" where the run builds Hessians anyway, else "diagonal".
    - ``distributed``: spread the run over the ranks of a torch.distributed process group
      (``process_group``, default: the default group). None: when one with more than one rank is
      initialised; True: insist; False: never. Every rank calls :func:`prune` with the same model,
      config and ``calib``; the calibration items are sharded over the ranks, the statistics
      reduced, each block's layer solves spread over the ranks and the pruned weights broadcast,
      so every rank ends with the model a single process would produce. See
      :mod:`prunekit.distributed`.
    """

    method: str | Callable = "wanda"
    sparsity: float | str | tuple = 0.5
    allocation: str = "uniform"
    refine: str | tuple | None = None
    block_refine_steps: int = 20
    block_refine_lr: float = 1e-4
    block_refine_validation: float = 0.125
    block_refine_batch: int | None = None
    block_refine_validate_every: int = 1
    block_refine_norms: bool = False
    block_refine_autocast: str | None = None
    compensate: LowRank | int | None = None
    ignore: Sequence[str] = ()
    sequential: bool = True
    within_block: str = "parallel"
    linear_backend: str = "auto"
    nsamples: int | None = None
    seed: int = 0
    blocksize: int = 128
    percdamp: float = 0.01
    update: str | None = None
    admm_rho: float = 1.0
    admm_iterations: int = 30
    admm_prune_iterations: int = 20
    admm_pcg_iterations: int = 20
    admm_percdamp: float = 0.01
    admm_per_row: bool = True
    ria_power: float = 0.5
    min_keep: float = 0.01
    owl_threshold: float = 5.0
    owl_lambda: float = 0.08
    gblm_gradient_scale: float = 100.0
    loss_fn: Callable | None = None
    dsnot_max_cycles: int = 50
    dsnot_threshold: float = 0.0
    device: str | torch.device | None = None
    blocks: str | None = None
    progress: bool = True
    report_errors: str | None = "auto"
    distributed: bool | None = None
    process_group: object | None = None
    gblm_loss: InitVar[Callable | None] = None

    def __post_init__(self, gblm_loss):
        if gblm_loss is not None:
            warnings.warn("PruneConfig(gblm_loss=...) is deprecated; pass the same callable as loss_fn=...",
                          DeprecationWarning, stacklevel=3)
            if self.loss_fn is not None and self.loss_fn is not gblm_loss:
                raise ValueError("PruneConfig.gblm_loss: expected it only without loss_fn (it is loss_fn's "
                                 "deprecated name), but got both")
            self.loss_fn = gblm_loss
        criterion = self.criterion  # checks the method
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"PruneConfig.allocation: expected one of {', '.join(ALLOCATIONS)}, "
                             f"but got {self.allocation!r}")
        if isinstance(self.refine, list):
            self.refine = tuple(self.refine)
        if self.refine not in REFINEMENTS and self.refine != ("dsnot", "block"):
            raise ValueError(f"PruneConfig.refine: expected None, 'dsnot', 'block' or ('dsnot', 'block'), but got "
                             f"{self.refine!r}")
        autocast = check_block_refine_options(self.block_refine_steps, self.block_refine_lr,
                                              self.block_refine_validation, self.block_refine_batch,
                                              self.block_refine_validate_every, self.block_refine_autocast,
                                              "PruneConfig.block_refine_")
        self.block_refine_autocast = None if autocast is None else dtype_name(autocast)
        if not isinstance(self.block_refine_norms, bool):
            raise ValueError(f"PruneConfig.block_refine_norms: expected True or False, but got "
                             f"{self.block_refine_norms!r}")
        if isinstance(self.compensate, int) and not isinstance(self.compensate, bool):
            self.compensate = LowRank(rank=self.compensate)
        if self.compensate is not None and not isinstance(self.compensate, LowRank):
            raise ValueError(f"PruneConfig.compensate: expected None, an int rank or a prunekit.LowRank, but got "
                             f"{self.compensate!r}")
        if self.linear_backend not in LINEAR_BACKENDS:
            raise ValueError(f"PruneConfig.linear_backend: expected one of {', '.join(map(repr, LINEAR_BACKENDS))}, "
                             f"but got {self.linear_backend!r}")
        if self.within_block not in WITHIN_BLOCK:
            raise ValueError(f"PruneConfig.within_block: expected one of {', '.join(map(repr, WITHIN_BLOCK))}, but got "
                             f"{self.within_block!r}")
        if self.within_block == "sequential":
            conflicts = [why for why, present in (
                ("sequential=False needs the dense block outputs, which it never computes", not self.sequential),
                ("refine='block' needs the dense block outputs, which it never computes", "block" in self.refinements),
                ("compensate swaps layers for low-rank ones while the block's forward is paused in it",
                 self.compensate is not None)) if present]
            if conflicts:
                raise ValueError(f"PruneConfig.within_block: 'sequential' cannot run here: {'; '.join(conflicts)}; use "
                                 "within_block='parallel'")
        if isinstance(self.ignore, str):
            self.ignore = (self.ignore,)
        self.ignore = tuple(self.ignore)
        if self.pattern is None:
            self.sparsity = check_sparsity(self.sparsity, "PruneConfig.sparsity")
        elif self.effective_allocation != "uniform":
            raise ValueError(f"PruneConfig.allocation: {self.effective_allocation!r} allocation needs an "
                             f"unstructured sparsity, but got the N:M pattern {self.sparsity!r}")
        if "dsnot" in self.refinements and not criterion.refinable:
            refinable = [name for name in criteria.names() if criteria.resolve(name).refinable]
            raise ValueError(f"PruneConfig.refine: 'dsnot' refines the masks of criteria ({', '.join(refinable)}, "
                             f"or any registered criterion); {criterion.name} updates weights, so it cannot be "
                             "combined with dsnot")
        missing = [option for option in criterion.options if option not in {f.name for f in fields(self)}]
        if missing:
            raise ValueError(f"PruneConfig.method: {criterion.name!r} declares options {missing} that are not "
                             "PruneConfig fields")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise ValueError(f"PruneConfig.loss_fn: expected None or a callable(model, batch) -> scalar loss, but "
                             f"got {type(self.loss_fn).__name__}")
        if self.nsamples is not None and self.nsamples < 1:
            raise ValueError(f"PruneConfig.nsamples: expected None or >= 1, but got {self.nsamples}")
        if self.blocksize < 1:
            raise ValueError(f"PruneConfig.blocksize: expected >= 1, but got {self.blocksize}")
        if self.percdamp < 0:
            raise ValueError(f"PruneConfig.percdamp: expected >= 0, but got {self.percdamp}")
        if self.update not in UPDATES:
            raise ValueError(f"PruneConfig.update: expected None or 'admm', but got {self.update!r}")
        check_admm_options(rho=self.admm_rho, iterations=self.admm_iterations,
                           prune_iterations=self.admm_prune_iterations, pcg_iterations=self.admm_pcg_iterations,
                           percdamp=self.admm_percdamp, prefix="PruneConfig.admm_")
        if not isinstance(self.admm_per_row, bool):
            raise ValueError(f"PruneConfig.admm_per_row: expected True or False, but got {self.admm_per_row!r}")
        check_power(self.ria_power, "PruneConfig.ria_power")
        if self.report_errors not in REPORT_ERRORS:
            raise ValueError(f"PruneConfig.report_errors: expected one of {', '.join(map(repr, REPORT_ERRORS))}, "
                             f"but got {self.report_errors!r}")
        if self.distributed not in (None, True, False):
            raise ValueError(f"PruneConfig.distributed: expected None, True or False, but got {self.distributed!r}")

    @property
    def criterion(self) -> criteria.Criterion | criteria.Solver:
        """The method, looked up (a name) or checked (an object), with its declared facts."""
        return criteria.resolve(self.method, "PruneConfig.method")

    @property
    def method_name(self) -> str:
        """The method's name in reports: a registered name, or the object's name or class name."""
        return self.criterion.name

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
        """``allocation``, unless the method implies one (global_magnitude: "global")."""
        return self.criterion.allocation or self.allocation

    @property
    def needs_calibration(self) -> bool:
        return (bool(self.criterion.needs & criteria.CALIBRATION_STATISTICS) or self.effective_allocation == "owl"
                or self.refine is not None or self.update is not None or self.compensate is not None)

    @property
    def block_refine_options(self) -> dict | None:
        """The ``block_refine_*`` fields as the block refinement's options (None without
        ``refine="block"``)."""
        if "block" not in self.refinements:
            return None
        return {"steps": self.block_refine_steps, "lr": self.block_refine_lr,
                "validation": self.block_refine_validation, "batch": self.block_refine_batch,
                "validate_every": self.block_refine_validate_every, "autocast": self.block_refine_autocast,
                "norms": self.block_refine_norms}

    @property
    def refinements(self) -> tuple[str, ...]:
        """The refinements asked for, in the order they run: (), ("dsnot",), ("block",) or both."""
        if self.refine is None:
            return ()
        return (self.refine,) if isinstance(self.refine, str) else tuple(self.refine)
