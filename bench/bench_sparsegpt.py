"""SparseGPT engine vs the pure-PyTorch reference loop, side by side in one process.

For each layer shape and pattern: the whole solve (factorisation included) with prunekit and
with prunekit.ops._reference.sparsegpt (the public reference algorithm's per-column loop), the
ratio, the relative reconstruction error ||X W^T - X W_s^T||^2 / ||X W^T||^2 of both, where
prunekit's time goes (factorisation vs column updates), and how the update phase's FLOP rate
compares with this machine's dense fp32 GEMM rate.

    python bench/bench_sparsegpt.py [--quick] [--shapes 1024 4096] [--tokens 2048]
"""

import argparse
import time

import torch

from _common import write_results

from prunekit.ops import _reference as ref
from prunekit.solvers import inverse_hessian_factor, sparsegpt

PATTERNS = {"50%": (0.5, None), "2:4": (None, "2:4")}


def seconds(fn, repeats: int) -> float:
    """Best of `repeats` single runs (each run is seconds long; best-of filters machine noise)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def relative_error(x, weight, pruned):
    return ((x @ (weight - pruned).T).square().sum() / (x @ weight.T).square().sum()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x512 layer, 256 tokens, one run")
    parser.add_argument("--shapes", type=int, nargs="+", default=[1024, 4096], help="square layer sizes")
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    shapes = [(256, 512)] if args.quick else [(s, s) for s in args.shapes]
    tokens = 256 if args.quick else args.tokens
    repeats = 1 if args.quick else args.repeats
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for out_features, in_features in shapes:
        # Inputs with unequal channel scales (as real activations have), weights Gaussian.
        x = torch.randn(tokens, in_features, generator=generator) * (0.1 + 3 * torch.rand(in_features, generator=generator))
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
            ours_s = seconds(lambda: result.update(ours=sparsegpt(weight, hessian, sparsity=sparsity, pattern=pattern)), repeats)
            ref_s = seconds(lambda: result.update(ref=ref.sparsegpt(weight, hessian, sparsity if sparsity else 0.5, n, m)), repeats)
            factor_s = seconds(lambda: inverse_hessian_factor(hessian), repeats)
            hinv = inverse_hessian_factor(hessian)
            update_s = seconds(lambda: torch.ops.prunekit.sparsegpt_solve_(
                weight.clone(), hinv, sparsity if sparsity else 0.0, n, m, 128), repeats)
            ours_err = relative_error(x, weight, result["ours"][0])
            ref_err = relative_error(x, weight, result["ref"][0])
            # Lazy updates are ~rows * cols^2 FMAs (block GEMMs) + rows * cols * blocksize/2 in-block.
            update_gflops = (2 * out_features * in_features**2 / 2 + out_features * in_features * 128) / update_s / 1e9
            row = {
                "shape": f"{out_features}x{in_features}", "tokens": tokens, "pattern": label,
                "prunekit_s": ours_s, "reference_s": ref_s, "time_ratio": ours_s / ref_s,
                "speedup": ref_s / ours_s, "prunekit_err": ours_err, "reference_err": ref_err,
                "err_ratio": ours_err / ref_err, "factorisation_s": factor_s, "update_s": update_s,
                "update_gflops": update_gflops, "dense_gemm_gflops": gemm_gflops,
                "masks_equal": bool(torch.equal(result["ours"][1], result["ref"][1])),
            }
            rows_out.append(row)
            print(f"{row['shape']:>10} {label:>4}: prunekit {ours_s:7.2f} s (factorisation {factor_s:.2f} s, "
                  f"updates {update_s:.2f} s at {update_gflops:.0f} GFLOP/s; dense GEMM {gemm_gflops:.0f}), "
                  f"reference {ref_s:7.2f} s -> time ratio {ours_s / ref_s:.3f} ({ref_s / ours_s:.1f}x); "
                  f"error {ours_err:.5f} vs {ref_err:.5f} (ratio {ours_err / ref_err:.5f})")
    suffix = "_quick" if args.quick else ""
    paths = write_results(
        f"sparsegpt_cpu{suffix}", rows_out,
        ["shape", "tokens", "pattern", "prunekit_s", "reference_s", "time_ratio", "prunekit_err", "reference_err",
         "err_ratio", "factorisation_s", "update_s", "update_gflops", "dense_gemm_gflops", "masks_equal"],
        "SparseGPT engine vs pure-PyTorch reference (CPU)",
    )
    print("wrote", *paths)


if __name__ == "__main__":
    main()
