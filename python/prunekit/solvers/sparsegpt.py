"""SparseGPT: one-shot pruning by Optimal-Brain-Surgeon column updates on the inverse Hessian.

The blocked column loop runs in the ``prunekit::sparsegpt_solve_`` op (fused C++ per block on
CPU, lazy batch updates as GEMMs); this module validates inputs and factorises the damped
Hessian robustly.
"""

import logging
import math
import warnings

import torch

from .._finite import all_finite
from .patterns import parse_pattern

logger = logging.getLogger(__name__)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_inputs(weight: torch.Tensor, hessian: torch.Tensor, name: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"sparsegpt({name}): weight must be a 2-D tensor (out_features, in_features), "
                         f"but got {getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in FLOAT_DTYPES:
        raise ValueError(f"sparsegpt({name}): weight must be floating point, but got {weight.dtype}")
    cols = weight.shape[1]
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"sparsegpt({name}): hessian must be square, but got shape {tuple(hessian.shape)}")
    if hessian.shape[0] != cols:
        raise ValueError(f"sparsegpt({name}): hessian must be ({cols}, {cols}) to match weight "
                         f"{tuple(weight.shape)}, but got {tuple(hessian.shape)}")
    if hessian.dtype not in FLOAT_DTYPES:
        raise ValueError(f"sparsegpt({name}): hessian must be floating point, but got {hessian.dtype}")
    if hessian.device != weight.device:
        raise ValueError(f"sparsegpt({name}): hessian and weight must be on the same device, "
                         f"but got {hessian.device} and {weight.device}")
    if weight.numel() == 0:
        raise ValueError(f"sparsegpt({name}): weight must be non-empty, but got shape {tuple(weight.shape)}")
    if not all_finite(weight):
        raise ValueError(f"sparsegpt({name}): weight must be finite, but it holds NaN or Inf")
    if not all_finite(hessian):
        raise ValueError(f"sparsegpt({name}): hessian must be finite, but it holds NaN or Inf "
                         "(NaN activations in calibration?)")


def _lower_triangular_inverse(lower: torch.Tensor, base: int = 256) -> torch.Tensor:
    """Inverse of a lower-triangular matrix by recursive halving, so nearly all the work is GEMMs:
    inv([[A, 0], [B, C]]) = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]."""
    size = lower.shape[0]
    if size <= base:
        eye = torch.eye(size, dtype=lower.dtype, device=lower.device)
        return torch.linalg.solve_triangular(lower, eye, upper=False)
    half = size // 2
    top = _lower_triangular_inverse(lower[:half, :half], base)
    bottom = _lower_triangular_inverse(lower[half:, half:], base)
    inverse = torch.zeros_like(lower)
    inverse[:half, :half] = top
    inverse[half:, half:] = bottom
    inverse[half:, :half] = -(bottom @ (lower[half:, :half] @ top))
    return inverse


def inverse_hessian_factor(
    hessian: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    percdamp: float = 0.01,
    max_retries: int = 4,
    name: str = "layer",
) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian, in fp32.

    Dead inputs (zero diagonal: the input never fired) get a unit diagonal and, when ``weight`` is
    given, their weight columns are zeroed in place (they cannot affect the output on the
    calibration data). Damping adds ``percdamp`` times the mean diagonal. If the Cholesky
    factorisation fails, damping is raised tenfold, at most ``max_retries`` times, with a warning
    naming the layer; then a ValueError. An all-zero Hessian is an error, never an identity.
    """
    hessian = hessian.detach().to(torch.float32, copy=True)
    diag = torch.diagonal(hessian)
    dead = diag == 0
    if bool(dead.all()):
        raise ValueError(f"sparsegpt({name}): hessian is all zeros: no calibration input reached this "
                         "layer (check the calibration data and hooks)")
    if bool(dead.any()):
        diag[dead] = 1.0
        if weight is not None:
            weight[:, dead] = 0
    if percdamp < 0:
        raise ValueError(f"sparsegpt({name}): percdamp must be >= 0, but got {percdamp}")
    damp = percdamp * diag.mean().item()
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    # With J the reversal permutation and J H J = L L^T, the upper Cholesky factor of H^-1 is
    # J L^-1 J: one Cholesky and one triangular inverse instead of Cholesky, inverse, Cholesky.
    reversed_hessian = hessian.flip(0, 1)
    for attempt in range(max_retries + 1):
        factor, info = torch.linalg.cholesky_ex(reversed_hessian + damp * eye)
        if int(info) == 0:
            upper = _lower_triangular_inverse(factor).flip(0, 1).contiguous()
            if all_finite(upper):
                return upper
        if attempt == max_retries:
            break
        next_damp = damp * 10 if damp > 0 else 1e-6 * diag.abs().mean().item()
        warnings.warn(
            f"sparsegpt({name}): Cholesky factorisation of the Hessian failed with damping {damp:.3g}; "
            f"retrying with {next_damp:.3g}",
            RuntimeWarning,
            stacklevel=2,
        )
        damp = next_damp
    raise ValueError(f"sparsegpt({name}): the Hessian is not positive definite even with damping "
                     f"{damp:.3g} after {max_retries} retries (degenerate calibration data?)")


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern=None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "layer",
    factor=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out_features, in_features) with SparseGPT given its layer Hessian.

    ``hessian`` is 2/n * sum X^T X over the calibration inputs (see
    :class:`prunekit.calibrate.HessianAccumulator`). ``pattern`` None means unstructured at
    ``sparsity`` (default 0.5; the exact count round(sparsity * numel) is pruned); ``(n, m)`` or
    ``"n:m"`` keeps n of every m consecutive inputs (``sparsity``, if given, must equal 1 - n/m).
    The math runs in fp32 whatever the input dtype. Inputs are not modified. ``factor``: a callable
    returning ``inverse_hessian_factor(hessian, percdamp=percdamp)`` computed once for the layers
    that share this Hessian (their results are those of computing it here).

    Returns ``(pruned_weight, keep_mask)``, the weight in its input dtype.
    """
    _check_inputs(weight, hessian, name)
    nm = parse_pattern(pattern)
    if nm is None:
        sparsity = 0.5 if sparsity is None else float(sparsity)
        if not 0.0 <= sparsity < 1.0 or math.isnan(sparsity):
            raise ValueError(f"sparsegpt({name}): sparsity must be in [0, 1), but got {sparsity}")
        n, m = 0, 0
    else:
        n, m = nm
        if sparsity is not None and not math.isclose(float(sparsity), 1 - n / m):
            raise ValueError(f"sparsegpt({name}): sparsity {sparsity} contradicts pattern {n}:{m} "
                             f"(which means sparsity {1 - n / m:g}); pass one of them")
        if weight.shape[1] % m:
            raise ValueError(f"sparsegpt({name}): in_features must be a multiple of m={m} for an {n}:{m} "
                             f"pattern, but got {weight.shape[1]}")
        sparsity = 1 - n / m
    if blocksize < 1:
        raise ValueError(f"sparsegpt({name}): blocksize must be >= 1, but got {blocksize}")
    if m and blocksize % m:
        blocksize = max(m, blocksize // m * m)  # N:M groups must not straddle blocks
    work = weight.detach().to(torch.float32, copy=True).contiguous()
    if factor is None:
        hinv = inverse_hessian_factor(hessian, work, percdamp=percdamp, name=name)
    else:
        hinv = factor()
        dead = torch.diagonal(hessian).to(torch.float32) == 0  # as inverse_hessian_factor zeroes them
        if bool(dead.any()):
            work[:, dead] = 0
    keep = torch.ops.prunekit.sparsegpt_solve_(work, hinv, sparsity, n, m, blocksize)
    return work.to(weight.dtype), keep
