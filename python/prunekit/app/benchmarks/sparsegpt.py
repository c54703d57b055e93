"""SparseGPT engine vs the pure-PyTorch reference loop, side by side in one process.

For each layer shape and pattern: the whole solve (factorisation included) with prunekit and
with prunekit.ops._reference.sparsegpt (the public reference algorithm's per-column loop), the
ratio, the relative reconstruction error ||X W^T - X W_s^T||^2 / ||X W^T||^2 of both, where
prunekit's time goes (factorisation vs column updates), and how the update phase's FLOP rate
compares with this machine's dense fp32 GEMM rate.
"""

from __future__ import annotations

import time

import torch

from .common import progress_bar, summarize_speedups

QUICK = "a 256x512 layer, 256 tokens, one run"
NAME = "sparsegpt_cpu"
TITLE = "SparseGPT engine vs pure-PyTorch reference (CPU)"
COLUMNS = ["shape", "tokens", "pattern", "prunekit_s", "reference_s", "time_ratio", "prunekit_err", "reference_err",
           "err_ratio", "factorisation_s", "update_s", "update_gflops", "dense_gemm_gflops", "masks_equal"]
PATTERNS = {"50%": (0.5, None), "2:4": (None, "2:4")}


def seconds(fn, repeats: int) -> float:
    """Best of ``repeats`` single runs (each run is seconds long; best-of filters machine noise)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def relative_error(x: torch.Tensor, weight: torch.Tensor, pruned: torch.Tensor) -> float:
    return ((x @ (weight - pruned).T).square().sum() / (x @ weight.T).square().sum()).item()


def run(quick: bool = False, *, shapes=(1024, 4096), tokens: int = 2048, repeats: int = 2, progress: bool = False,
        on_row=None) -> list[dict]:
    """One row per (square shape, pattern). ``quick``: a 256x512 layer, 256 tokens, one run."""
    from prunekit.ops import _reference as ref
    from prunekit.solvers import inverse_hessian_factor, sparsegpt

    layer_shapes = [(256, 512)] if quick else [(s, s) for s in shapes]
    tokens = 256 if quick else tokens
    repeats = 1 if quick else repeats
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    with progress_bar(len(layer_shapes) * len(PATTERNS), "bench sparsegpt", progress) as bar:
        for out_features, in_features in layer_shapes:
            # Inputs with unequal channel scales (as real activations have), weights Gaussian.
            x = torch.randn(tokens, in_features, generator=generator) * (
                0.1 + 3 * torch.rand(in_features, generator=generator))
            weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
            hessian = 2 / tokens * x.T @ x
            # Dense GEMM rate of this machine at the update phase's shape, for context.
            a = torch.randn(out_features, 128)
            b = torch.randn(128, in_features)
            gemm_s = seconds(lambda: a @ b, 5)
            gemm_gflops = 2 * out_features * 128 * in_features / gemm_s / 1e9
            for label, (sparsity, pattern) in PATTERNS.items():
                n, m = (2, 4) if pattern else (0, 0)
                result = {}
                ours_s = seconds(lambda: result.update(
                    ours=sparsegpt(weight, hessian, sparsity=sparsity, pattern=pattern)), repeats)
                ref_s = seconds(lambda: result.update(
                    ref=ref.sparsegpt(weight, hessian, sparsity if sparsity else 0.5, n, m)), repeats)
                factor_s = seconds(lambda: inverse_hessian_factor(hessian), repeats)
                hinv = inverse_hessian_factor(hessian)
                update_s = seconds(lambda: torch.ops.prunekit.sparsegpt_solve_(
                    weight.clone(), hinv, sparsity if sparsity else 0.0, n, m, 128), repeats)
                ours_err = relative_error(x, weight, result["ours"][0])
                ref_err = relative_error(x, weight, result["ref"][0])
                # Lazy updates are ~rows * cols^2 FMAs (block GEMMs) + rows * cols * blocksize/2 in-block.
                update_gflops = (2 * out_features * in_features**2 / 2 + out_features * in_features * 128) \
                    / update_s / 1e9
                row = {
                    "shape": f"{out_features}x{in_features}", "tokens": tokens, "pattern": label,
                    "prunekit_s": ours_s, "reference_s": ref_s, "time_ratio": ours_s / ref_s,
                    "speedup": ref_s / ours_s, "prunekit_err": ours_err, "reference_err": ref_err,
                    "err_ratio": ours_err / ref_err, "factorisation_s": factor_s, "update_s": update_s,
                    "update_gflops": update_gflops, "dense_gemm_gflops": gemm_gflops,
                    "masks_equal": bool(torch.equal(result["ours"][1], result["ref"][1])),
                }
                rows_out.append(row)
                bar.update()
                if on_row is not None:
                    on_row(row)
    return rows_out


def describe(row: dict) -> str:
    return (f"{row['shape']:>10} {row['pattern']:>4}: prunekit {row['prunekit_s']:7.2f} s (factorisation "
            f"{row['factorisation_s']:.2f} s, updates {row['update_s']:.2f} s at {row['update_gflops']:.0f} GFLOP/s; "
            f"dense GEMM {row['dense_gemm_gflops']:.0f}), reference {row['reference_s']:7.2f} s -> time ratio "
            f"{row['time_ratio']:.3f} ({row['speedup']:.1f}x); error {row['prunekit_err']:.5f} vs "
            f"{row['reference_err']:.5f} (ratio {row['err_ratio']:.5f})")


def summarize(rows: list[dict]) -> list[dict]:
    """Speed-up of the whole solve over the pure-PyTorch reference loop, per pattern."""
    return summarize_speedups("sparsegpt", rows, ["pattern"], "speedup", "torch reference loop")
