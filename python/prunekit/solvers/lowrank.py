"""Low-rank compensation of a pruned layer in the eigenspace of its inputs (EoRA).

Pruning leaves an error dW = W - W_s whose effect on the layer's outputs is ||X dW^T||_F. A
rank-r correction B A (B: (out, r), A: (r, in)) fitted to dW by a plain truncated SVD minimises
||dW - B A||_F, which weighs every input direction alike; EoRA instead minimises the output error
||X (dW - B A)^T||_F, exactly, through the eigendecomposition of the layer's input second moment
H = Q diag(lambda) Q^T (the calibration Hessian, proportional to X^T X):

    dW' = dW Q diag(sqrt(lambda))          (the error seen through the inputs' spread)
    dW' ~ U_r S_r V_r^T                    (truncated SVD: the best rank r in that metric)
    B = U_r S_r^(1/2),  A = S_r^(1/2) V_r^T diag(1/sqrt(lambda)) Q^T

since ||X M^T||_F^2 is proportional to tr(M H M^T) = ||M Q diag(sqrt(lambda))||_F^2. Eigenvalues
below ``eigenvalue_floor`` times the largest are raised to it, so that directions the calibration
inputs never excite do not blow A up (the fit is then optimal up to those directions).

The factors are stored in the layer's dtype beside the sparse weight: y = x W_s^T + (x A^T) B^T.
:class:`LowRank` says which rank each layer gets (a fixed ``rank``, or a ``budget``: a fraction
of the layer's dense weight bytes the two factors may add).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LowRank", "eora_factors", "lowrank_error_terms"]


@dataclass(frozen=True)
class LowRank:
    """Low-rank compensation of pruned layers (``PruneConfig(compensate=LowRank(...))``).

    - ``rank``: the rank of every layer's correction; a rank above min(out, in) of a layer is an
      error naming the layer.
    - ``budget``: instead of ``rank``, the fraction of each layer's dense weight bytes the two
      factors may add: rank = floor(budget * out * in / (out + in)), at most min(out, in); a layer
      whose budget allows rank 0 gets no correction.
    - ``eigenvalue_floor``: eigenvalues of the input second moment below this fraction of the
      largest are raised to it (see :mod:`prunekit.solvers.lowrank`).
    """

    rank: int | None = None
    budget: float | None = None
    eigenvalue_floor: float = 1e-6

    def __post_init__(self):
        if (self.rank is None) == (self.budget is None):
            raise ValueError(f"LowRank: expected exactly one of rank and budget, but got rank={self.rank!r}, "
                             f"budget={self.budget!r}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"LowRank: argument 'rank' must be an int >= 1, but got {self.rank!r}")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, (int, float))
                                        or not 0.0 < self.budget <= 1.0):
            raise ValueError(f"LowRank: argument 'budget' must be a fraction in (0, 1], but got {self.budget!r}")
        if (isinstance(self.eigenvalue_floor, bool) or not isinstance(self.eigenvalue_floor, (int, float))
                or not 0.0 < self.eigenvalue_floor < 1.0):
            raise ValueError(f"LowRank: argument 'eigenvalue_floor' must be in (0, 1), but got "
                             f"{self.eigenvalue_floor!r}")

    def rank_for(self, out_features: int, in_features: int, name: str) -> int:
        """The rank of the correction of a layer of this shape (0: none)."""
        limit = min(out_features, in_features)
        if self.rank is not None:
            if self.rank > limit:
                raise ValueError(f"LowRank: layer {name} ({out_features} x {in_features}) allows a rank of at most "
                                 f"{limit}, but got rank={self.rank}")
            return self.rank
        return min(limit, math.floor(self.budget * out_features * in_features / (out_features + in_features)))


def eigenspace(hessian: torch.Tensor, eigenvalue_floor: float, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, sqrt(lambda) floored) of the symmetric input second moment ``hessian``, in float64."""
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"low-rank compensation: layer {name}: expected a square Hessian, but got shape "
                         f"{tuple(hessian.shape)}")
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError(f"low-rank compensation: layer {name}: the input second moment holds NaN or Inf")
    symmetric = hessian.to(torch.float64)
    symmetric = (symmetric + symmetric.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
    largest = float(eigenvalues.max())
    if not largest > 0:
        raise ValueError(f"low-rank compensation: layer {name}: its calibration inputs are all zero (the input "
                         "second moment has no positive eigenvalue); nothing to fit a correction to")
    return eigenvectors, eigenvalues.clamp_min(largest * eigenvalue_floor).sqrt()


def eora_factors(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor, rank: int, *, name: str = "layer",
                 eigenvalue_floor: float = 1e-6,
                 eigen: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, in), B (out, rank)) with ``B @ A`` the rank-``rank`` matrix closest to
    ``dense - pruned`` in the output metric of ``hessian`` (see the module docstring), in
    ``dense``'s dtype. ``eigen``: :func:`eigenspace` of ``hessian`` when the caller has it (layers
    sharing their input share it)."""
    if dense.dim() != 2 or dense.shape != pruned.shape:
        raise ValueError(f"low-rank compensation: layer {name}: expected dense and pruned weights of one 2-D shape, "
                         f"but got {tuple(dense.shape)} and {tuple(pruned.shape)}")
    out_features, in_features = dense.shape
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(f"low-rank compensation: layer {name}: expected a Hessian of shape ({in_features}, "
                         f"{in_features}), but got {tuple(hessian.shape)}")
    limit = min(out_features, in_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"low-rank compensation: layer {name} ({out_features} x {in_features}) allows a rank in "
                         f"[1, {limit}], but got {rank!r}")
    eigenvectors, scale = eigen if eigen is not None else eigenspace(hessian, eigenvalue_floor, name)
    eigenvectors, scale = eigenvectors.to(dense.device), scale.to(dense.device)
    delta = dense.to(torch.float64) - pruned.to(torch.float64)
    projected = (delta @ eigenvectors) * scale
    left, singular, right = torch.linalg.svd(projected, full_matrices=False)
    root = singular[:rank].sqrt()
    factor_b = left[:, :rank] * root
    factor_a = ((root[:, None] * right[:rank]) / scale) @ eigenvectors.T
    return factor_a.to(dense.dtype).contiguous(), factor_b.to(dense.dtype).contiguous()


def lowrank_error_terms(dense: torch.Tensor, corrected: torch.Tensor, hessian: torch.Tensor) -> tuple[float, float]:
    """(tr(dW H dW^T), tr(W H W^T)) with dW = dense - corrected, in float64."""
    hessian = hessian.to(torch.float64)
    dense = dense.to(torch.float64)
    delta = dense - corrected.to(torch.float64)
    return max(float(((delta @ hessian) * delta).sum()), 0.0), float(((dense @ hessian) * dense).sum())
