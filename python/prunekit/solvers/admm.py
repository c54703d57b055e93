"""ADMM reconstruction (Boza 2024; ALPS, Meng et al. 2024): minimise ||X W^T - X W_s^T||^2 over
weights W_s on a sparse support.

The problem is scaled so that the Hessian has a unit diagonal (then |W_s| compares weights as
Wanda's |W| * ||X|| does) and damped by ``percdamp`` (a ridge towards the dense weights, which
also regularises the fit to the calibration text). ADMM alternates a ridge step through one
factorisation of H + rho I, a projection onto the sparsity (pruned gradually to the target along
a cubic schedule, or a fixed mask) and a dual update; a final least-squares solve on the support
by preconditioned conjugate gradients follows. The loop runs in the ``prunekit::admm_solve`` op
(ATen GEMMs, every device); this module checks inputs, scales and factorises with SparseGPT's
damping escalation.
"""

from __future__ import annotations

import math
import warnings

import torch

from .. import ops
from .._finite import all_finite
from .patterns import parse_pattern
from .sparsegpt import FLOAT_DTYPES, _lower_triangular_inverse

MAX_ITERATIONS = 10_000


def _fail(name: str, message: str) -> ValueError:
    return ValueError(f"admm({name}): {message}")


def check_admm_options(*, rho, iterations, prune_iterations, pcg_iterations, percdamp, prefix: str = "admm: ") -> None:
    """ValueError naming the option (``prefix`` + its name) for a rho, iteration count or damping
    out of range."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"{prefix}rho: expected a finite number > 0, but got {rho!r}")
    for option, value in (("iterations", iterations), ("prune_iterations", prune_iterations),
                          ("pcg_iterations", pcg_iterations)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ITERATIONS:
            raise ValueError(f"{prefix}{option}: expected an integer in [0, {MAX_ITERATIONS}], but got {value!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not math.isfinite(percdamp) or \
            percdamp < 0:
        raise ValueError(f"{prefix}percdamp: expected a finite number >= 0, but got {percdamp!r}")


def _check_inputs(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor | None, name: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.numel() == 0:
        raise _fail(name, f"weight must be a non-empty 2-D tensor (out_features, in_features), but got "
                    f"{getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in FLOAT_DTYPES:
        raise _fail(name, f"weight must be floating point, but got {weight.dtype}")
    cols = weight.shape[1]
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (cols, cols):
        raise _fail(name, f"hessian must be ({cols}, {cols}) to match weight {tuple(weight.shape)}, but got "
                    f"{tuple(getattr(hessian, 'shape', ()))}")
    if hessian.dtype not in FLOAT_DTYPES:
        raise _fail(name, f"hessian must be floating point, but got {hessian.dtype}")
    if hessian.device != weight.device:
        raise _fail(name, f"hessian and weight must be on the same device, but got {hessian.device} and "
                    f"{weight.device}")
    if keep is not None and (not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or
                             keep.shape != weight.shape or keep.device != weight.device):
        raise _fail(name, f"keep must be a bool tensor of the weight's shape {tuple(weight.shape)} on "
                    f"{weight.device}, but got {getattr(keep, 'dtype', type(keep))} "
                    f"{tuple(getattr(keep, 'shape', ()))}")
    if not all_finite(weight):
        raise _fail(name, "weight must be finite, but it holds NaN or Inf")
    if not all_finite(hessian):
        raise _fail(name, "hessian must be finite, but it holds NaN or Inf (NaN activations in calibration?)")


def _factorise(hessian: torch.Tensor, rho: float, percdamp: float, max_retries: int,
               name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(H + damp I, (H + damp I + rho I)^-1) for the unit-diagonal ``hessian``. Both must be positive
    definite (the conjugate gradients need the first); on failure the damping rises tenfold with a
    warning naming the layer, at most ``max_retries`` times, then a ValueError."""
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    damp = percdamp
    for attempt in range(max_retries + 1):
        damped = hessian + damp * eye
        _, info = torch.linalg.cholesky_ex(damped)
        factor, info_rho = torch.linalg.cholesky_ex(damped + rho * eye)
        if int(info) == 0 and int(info_rho) == 0:
            # (L L^T)^-1 = L^-T L^-1 from a GEMM-based triangular inverse (LAPACK's potri is far slower).
            lower_inverse = _lower_triangular_inverse(factor)
            inverse = lower_inverse.T @ lower_inverse
            if all_finite(inverse):
                return damped, inverse
        if attempt == max_retries:
            break
        next_damp = damp * 10 if damp > 0 else 1e-6
        warnings.warn(f"admm({name}): Cholesky factorisation of the Hessian failed with damping {damp:.3g}; "
                      f"retrying with {next_damp:.3g}", RuntimeWarning, stacklevel=3)
        damp = next_damp
    raise _fail(name, f"the Hessian is not positive definite even with damping {damp:.3g} after {max_retries} "
                "retries (degenerate calibration data?)")


def admm(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern=None,
    keep: torch.Tensor | None = None,
    rho: float = 1.0,
    iterations: int = 30,
    prune_iterations: int = 20,
    pcg_iterations: int = 20,
    percdamp: float = 0.01,
    per_row: bool = True,
    max_retries: int = 4,
    name: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out_features, in_features) by ADMM reconstruction on its layer Hessian
    (2/n X^T X), or, with ``keep``, reconstruct the weights on that fixed support.

    ``pattern`` None: unstructured at ``sparsity`` (exactly round(sparsity * numel) pruned, compared
    per output row when ``per_row``, else across the layer); ``(n, m)`` or "n:m": n kept of every m
    consecutive inputs. ``rho``: the ADMM penalty, relative to the unit diagonal of the scaled
    Hessian; ``iterations`` ADMM steps, the first ``prune_iterations`` of which raise the sparsity
    along a cubic schedule; ``pcg_iterations`` conjugate-gradient steps on the final support;
    ``percdamp``: ridge damping relative to the diagonal. Dead inputs (never active) get zero
    weights. Returns ``(pruned_weight, keep_mask)`` in the weight's dtype; inputs are not modified.
    """
    _check_inputs(weight, hessian, keep, name)
    check_admm_options(rho=rho, iterations=iterations, prune_iterations=prune_iterations,
                       pcg_iterations=pcg_iterations, percdamp=percdamp, prefix=f"admm({name}): ")
    prune_iterations = min(prune_iterations, iterations)
    nm = parse_pattern(pattern)
    if nm is None:
        sparsity = 0.5 if sparsity is None else float(sparsity)
        if math.isnan(sparsity) or not 0.0 <= sparsity < 1.0:
            raise _fail(name, f"sparsity must be in [0, 1), but got {sparsity}")
        n, m = 0, 0
    else:
        n, m = nm
        if sparsity is not None and not math.isclose(float(sparsity), 1 - n / m):
            raise _fail(name, f"sparsity {sparsity} contradicts pattern {n}:{m} (which means sparsity "
                        f"{1 - n / m:g}); pass one of them")
        if weight.shape[1] % m:
            raise _fail(name, f"in_features must be a multiple of m={m} for an {n}:{m} pattern, but got "
                        f"{weight.shape[1]}")
        sparsity = 1 - n / m
    work = weight.detach().to(torch.float32, copy=True)
    scaled = hessian.detach().to(torch.float32, copy=True)
    diag = torch.diagonal(scaled)
    dead = diag <= 0
    if bool(dead.all()):
        raise _fail(name, "hessian is all zeros: no calibration input reached this layer (check the calibration "
                    "data and hooks)")
    if bool(dead.any()):
        scaled[dead, :] = 0
        scaled[:, dead] = 0
        diag[dead] = 1.0
        work[:, dead] = 0
    norms = diag.sqrt()
    scaled = scaled / norms.unsqueeze(0) / norms.unsqueeze(1)
    damped, inverse = _factorise(scaled, float(rho), float(percdamp), max_retries, name)
    pruned, kept = ops.admm_solve((work * norms).contiguous(), damped.contiguous(), inverse.contiguous(),
                                  None if keep is None else keep.contiguous(), sparsity, n, m, per_row,
                                  float(rho), iterations, prune_iterations, pcg_iterations)
    return (pruned / norms).to(weight.dtype), kept


def update_from_config(config, dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor,
                       name: str) -> torch.Tensor:
    """``PruneConfig(update="admm")``: the weights of ``pruned``'s support (its nonzeros, the
    method's mask) reconstructed from ``dense`` by ADMM with the config's ``admm_*`` options."""
    updated, _ = admm(dense, hessian, keep=pruned != 0, rho=config.admm_rho, iterations=config.admm_iterations,
                      prune_iterations=0, pcg_iterations=config.admm_pcg_iterations,
                      percdamp=config.admm_percdamp, per_row=config.admm_per_row, name=name)
    return updated
