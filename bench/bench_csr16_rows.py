"""CSR16 against the bitmap kernels on SmolLM2's block linears, per rows per call and sparsity.

``SparseLinear`` runs an unstructured weight on CPU through the bitmap kernels or its CSR16 index,
by the CPU's table (``prunekit.nn.auto.CSR16_MIN_SPARSITY_BY_ROWS``). This measures what the table
decides, as a decode step sees it: the 210 linears of SmolLM2-135M's 30 blocks (q, k, v, o, gate,
up, down; random weights, each row pruned to the sparsity as Wanda prunes, the count rounded down)
called in model order, so the 106 M weights stream from memory. Both kernels are forced in turn on
the same modules, alternately for ``--rounds`` rounds; the ratio is CSR16 over bitmap of the median
times (below 1: CSR16 pays).

    python bench/bench_csr16_rows.py [--threads 2] [--rows 1 2 3 4] [--sparsities 0.7 0.8 0.85 0.9 0.95]
        [--dtypes float32 bfloat16] [--rounds 11]
    # writes bench/results/csr16_rows_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import write_results

from prunekit.nn import SparseLinear
from prunekit.nn.auto import csr16_runs

# (out, in) of a SmolLM2 block's linears in model order.
BLOCK_SHAPES = ((576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536))
BLOCKS = 30
COLUMNS = ["dtype", "rows", "sparsity", "bitmap_ms", "csr16_ms", "csr16_over_bitmap", "table_runs_csr16"]


def block_linears(sparsity: float, dtype: torch.dtype, generator: torch.Generator) -> list[SparseLinear]:
    modules = []
    for _ in range(BLOCKS):
        for out_features, in_features in BLOCK_SHAPES:
            weight = torch.randn(out_features, in_features, generator=generator)
            order = torch.rand(out_features, in_features, generator=generator).argsort(dim=1)
            weight.scatter_(1, order[:, :int(in_features * sparsity)], 0.0)
            linear = torch.nn.Linear(in_features, out_features, bias=False)
            linear.weight.data = weight.to(dtype)
            modules.append(SparseLinear.from_dense(linear, "unstructured"))
    return modules


def force(modules: list[SparseLinear], dtype: torch.dtype, csr16: bool) -> None:
    for module in modules:
        module._csr16_choices = {dtype: ((None, csr16),)}  # setting an attribute drops the cached call


@torch.no_grad()
def measure(modules: list[SparseLinear], dtype: torch.dtype, rows: int, rounds: int) -> dict[str, float]:
    inputs = {cols: torch.randn(1, rows, cols).to(dtype) for cols in {m.cols for m in modules}}

    def step():
        for module in modules:
            module(inputs[module.cols])

    times: dict[str, list[float]] = {"bitmap": [], "csr16": []}
    for _ in range(rounds):
        for kernel in times:
            force(modules, dtype, kernel == "csr16")
            step()
            started = time.perf_counter()
            for _ in range(5):
                step()
            times[kernel].append((time.perf_counter() - started) / 5 * 1e3)
    return {kernel: statistics.median(values) for kernel, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.7, 0.8, 0.85, 0.9, 0.95])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for sparsity in args.sparsities:
            modules = block_linears(sparsity, dtype, torch.Generator().manual_seed(0))
            if modules[0].runtime_col_indices is None:
                raise SystemExit(f"sparsity {sparsity} is below the CSR16 index's minimum")
            table = modules[0]._csr16_choices[dtype]  # this CPU's choice, before forcing
            for rows in args.rows:
                ms = measure(modules, dtype, rows, args.rounds)
                row = {"dtype": dtype_name, "rows": rows, "sparsity": round(modules[0].sparsity, 4),
                       "bitmap_ms": round(ms["bitmap"], 2), "csr16_ms": round(ms["csr16"], 2),
                       "csr16_over_bitmap": round(ms["csr16"] / ms["bitmap"], 2),
                       "table_runs_csr16": csr16_runs(rows, table)}
                print(row, flush=True)
                results.append(row)
    paths = write_results("csr16_rows_cpu", results, COLUMNS,
                          "CSR16 vs bitmap kernels, SmolLM2's 210 block linears in model order (ms per pass)")
    print("wrote", *paths)


if __name__ == "__main__":
    main()
