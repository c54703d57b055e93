"""SparseGPT on CUDA against the reference SparseGPT loop on the same GPU, side by side.

The reference is the algorithm as the SparseGPT paper's code writes it, in plain torch: Cholesky,
inverse, Cholesky of the damped Hessian, then per block of 128 columns a threshold from a sort of
the block's scores (unstructured) or a top-k per group (N:M), a Python loop over the block's
columns (one rank-1 update each), and a GEMM carrying the block's errors to later columns.
prunekit's solve (:func:`prunekit.solvers.sparsegpt`) runs its factorisation through torch.linalg
and the column updates in ``prunekit::sparsegpt_solve_`` (fused in-block kernel, cuBLAS GEMMs).
Both run whole (factorisation included) on the same weight and Hessian; each row gives the times,
their ratio, the relative reconstruction errors ||X W^T - X W_s^T||^2 / ||X W^T||^2 of both, and
where prunekit's time goes.
"""

from __future__ import annotations

import time

import torch

from .common import progress_bar, summarize_speedups
from .common import cuda_available as available  # noqa: F401  (the families' availability probe)

QUICK = "a 1024x1024 layer, one run"
NAME = "sparsegpt_cuda"
TITLE = "SparseGPT on CUDA vs the reference SparseGPT loop (plain torch, same GPU)"
COLUMNS = ["gpu", "shape", "tokens", "pattern", "prunekit_ms", "reference_ms", "time_ratio", "prunekit_err",
           "reference_err", "err_ratio", "factorisation_ms", "solve_ms", "sparsity"]
PATTERNS = {"50%": (0.5, None), "2:4": (None, "2:4")}


def reference_sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int = 0, m: int = 0,
                        blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """The SparseGPT paper's algorithm as its code writes it, in plain torch on the inputs' device:
    returns the pruned fp32 weight. ``n:m`` keeps n of every m (m = 0: unstructured)."""
    w = weight.detach().to(torch.float32, copy=True)
    h = hessian.detach().to(torch.float32, copy=True)
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    index = torch.arange(cols, device=h.device)
    h[index, index] += percdamp * torch.mean(torch.diag(h))
    h = torch.linalg.cholesky(h)
    h = torch.cholesky_inverse(h)
    hinv = torch.linalg.cholesky(h, upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(hinv1)
        if m == 0:
            scores = w1**2 / d1.reshape(1, -1) ** 2
            threshold = torch.sort(scores.flatten())[0][int(scores.numel() * sparsity)]
            pruned = scores <= threshold
        else:
            pruned = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            col = w1[:, i]
            if m and i % m == 0:
                scores = w1[:, i:i + m] ** 2 / d1[i:i + m].reshape(1, -1) ** 2
                pruned.scatter_(1, i + torch.topk(scores, m - n, dim=1, largest=False)[1], True)
            q = col.clone()
            q[pruned[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w


def cuda_seconds(fn, repeats: int) -> float:
    """Best of ``repeats`` runs, each timed from a synchronized start to a synchronized end."""
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def relative_error(x: torch.Tensor, weight: torch.Tensor, pruned: torch.Tensor) -> float:
    return ((x @ (weight - pruned).T).square().sum() / (x @ weight.T).square().sum()).item()


def run(quick: bool = False, *, shapes=(4096, 8192), tokens: int = 2048, repeats: int = 2, progress: bool = False,
        on_row=None) -> list[dict]:
    """One row per (square shape, pattern) on the current GPU; [] when CUDA cannot run here."""
    ok, _ = available()
    if not ok:
        return []
    from prunekit.solvers import inverse_hessian_factor, sparsegpt

    device = torch.device("cuda")
    layer_shapes = [(1024, 1024)] if quick else [(s, s) for s in shapes]
    repeats = 1 if quick else repeats
    generator = torch.Generator(device=device).manual_seed(0)
    gpu = torch.cuda.get_device_name()
    rows_out = []
    # A warm-up solve loads the kernels and cuBLAS/cuSOLVER handles outside the timings.
    x0 = torch.randn(256, 256, device=device, generator=generator)
    sparsegpt(torch.randn(64, 256, device=device, generator=generator), 2 / 256 * x0.T @ x0, sparsity=0.5)
    with progress_bar(len(layer_shapes) * len(PATTERNS), "bench sparsegpt_cuda", progress) as bar:
        for out_features, in_features in layer_shapes:
            # Inputs with unequal channel scales (as real activations have), weights Gaussian.
            x = torch.randn(tokens, in_features, device=device, generator=generator) * (
                0.1 + 3 * torch.rand(in_features, device=device, generator=generator))
            weight = torch.randn(out_features, in_features, device=device, generator=generator) / in_features**0.5
            hessian = torch.zeros(in_features, in_features, device=device)
            torch.ops.prunekit.hessian_accumulate_(hessian, x, 0)
            for label, (sparsity, pattern) in PATTERNS.items():
                n, m = (2, 4) if pattern else (0, 0)
                result = {}
                ours_s = cuda_seconds(lambda: result.update(
                    ours=sparsegpt(weight, hessian, sparsity=sparsity, pattern=pattern)), repeats)
                ref_s = cuda_seconds(lambda: result.update(
                    ref=reference_sparsegpt(weight, hessian, sparsity or 0.0, n, m)), repeats)
                factor_s = cuda_seconds(lambda: inverse_hessian_factor(hessian), repeats)
                hinv = inverse_hessian_factor(hessian)
                solve_s = cuda_seconds(lambda: torch.ops.prunekit.sparsegpt_solve_(
                    weight.clone(), hinv, sparsity or 0.0, n, m, 128), repeats)
                ours_err = relative_error(x, weight, result["ours"][0])
                ref_err = relative_error(x, weight, result["ref"])
                row = {
                    "gpu": gpu, "shape": f"{out_features}x{in_features}", "tokens": tokens, "pattern": label,
                    "prunekit_ms": ours_s * 1e3, "reference_ms": ref_s * 1e3, "time_ratio": ours_s / ref_s,
                    "speedup": ref_s / ours_s, "prunekit_err": ours_err, "reference_err": ref_err,
                    "err_ratio": ours_err / ref_err, "factorisation_ms": factor_s * 1e3, "solve_ms": solve_s * 1e3,
                    "sparsity": 1 - result["ours"][1].float().mean().item(),
                }
                rows_out.append(row)
                bar.update()
                if on_row is not None:
                    on_row(row)
            torch.cuda.empty_cache()
    return rows_out


def describe(row: dict) -> str:
    return (f"{row['gpu']} {row['shape']:>10} {row['pattern']:>4}: prunekit {row['prunekit_ms']:8.1f} ms "
            f"(factorisation {row['factorisation_ms']:.1f}, solve {row['solve_ms']:.1f}), reference "
            f"{row['reference_ms']:8.1f} ms -> time ratio {row['time_ratio']:.3f} ({row['speedup']:.1f}x); error "
            f"{row['prunekit_err']:.5f} vs {row['reference_err']:.5f} (ratio {row['err_ratio']:.5f})")


def summarize(rows: list[dict]) -> list[dict]:
    """Speed-up of the whole solve over the reference loop on the same GPU, per pattern."""
    return summarize_speedups("sparsegpt_cuda", rows, ["pattern"], "speedup", "reference SparseGPT loop (CUDA)")
