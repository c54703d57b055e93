"""Where prunekit's sparse modules on CUDA break even with cuBLAS on this GPU: the measurement behind
"auto" on CUDA (:data:`prunekit.nn.BREAK_EVEN_SPARSITY_CUDA`, one table per GPU architecture,
empty until this has run on that GPU).

Times the modules a model runs, SparseLinear / SparseConv2d against nn.Linear / nn.Conv2d on the
GPU, across sparsity, rows per call (tokens; pixels for the 1x1 convolution) and dtype: an
"unstructured" weight (the tiled bitmap kernels, "linear" and "conv1x1") and a "2:4" one
("linear24": whatever the module runs for 2:4 on CUDA). GPU time per call from CUDA graphs, each
call meeting another weight copy so that weights come from HBM (cuda_timing.py).
:func:`cuda_table` turns the rows into the table's entry for this GPU (printed as Python to paste
into prunekit/nn/auto.py): per kernel, dtype and rows per call, the lowest sparsity from which the
sparse module wins or ties (within :data:`break_even.PARITY`) on every shape, in every repeat, at
every sparsity measured above it.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from prunekit._names import dtype_name
from .break_even import PARITY
from .common import progress_bar
from .cuda_timing import copy_count, gpu_arch, graph_us
from .shapes import LLAMA_7B, MOBILENET_V1_POINTWISE
from .common import cuda_available as available  # noqa: F401  (the families' availability probe)

NAME = "break_even_cuda"
TITLE = "Sparse vs dense torch modules on CUDA across sparsity: where prunekit's GPU kernels break even"
COLUMNS = ["gpu", "arch", "kernel", "dtype", "shape", "rows", "sparsity", "repeat", "sparse_us", "dense_us",
           "speedup"]
QUICK = "one linear shape, bf16, sparsity 0.5 and 0.9, rows 1 and 16"
LINEAR_SHAPES = LLAMA_7B
CONV1X1_SHAPES = {name: MOBILENET_V1_POINTWISE[name] for name in ("mobilenet_v1.pw6", "mobilenet_v1.pw8",
                                                                  "mobilenet_v1.pw13")}
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 512, 2048)
CONV_IMAGES = (1, 8)
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
DTYPES = (torch.bfloat16, torch.float16)


def _weight(rows: int, cols: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(rows, cols, device="cuda", generator=generator)
    weight[torch.rand(rows, cols, device="cuda", generator=generator) < sparsity] = 0
    return weight


def _weight_24(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    from prunekit.ops import nm_mask

    weight = torch.randn(rows, cols, device="cuda", generator=generator)
    return weight * nm_mask(torch.rand(rows, cols, device="cuda", generator=generator), 2, 4)


def _cases(quick: bool):
    """(kernel, dtype, shape name, shape, sparsities, rows per call) in the order they run."""
    dtypes = (torch.bfloat16,) if quick else DTYPES
    linear = {"llama7b.q_proj": LINEAR_SHAPES["llama7b.q_proj"]} if quick else LINEAR_SHAPES
    sparsities = (0.5, 0.9) if quick else SPARSITIES
    rows = (1, 16) if quick else ROWS
    for dtype, (name, shape) in itertools.product(dtypes, linear.items()):
        yield "linear", dtype, name, shape, sparsities, rows
        yield "linear24", dtype, name, shape, (0.5,), rows
    if not quick:
        for dtype, (name, shape) in itertools.product(dtypes, CONV1X1_SHAPES.items()):
            yield "conv1x1", dtype, name, shape, sparsities, CONV_IMAGES


def _modules(kernel: str, dtype: torch.dtype, shape, sparsity: float, generator: torch.Generator):
    """(dense copies, sparse copies, input for a rows-per-call count) of one case."""
    from prunekit.nn import SparseConv2d, SparseLinear

    if kernel == "conv1x1":
        out_channels, in_channels, side = shape
        weight = _weight(out_channels, in_channels, sparsity, generator)[:, :, None, None].to(dtype)
        dense = nn.Conv2d(in_channels, out_channels, 1, device="cuda", dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
        sparse = SparseConv2d.from_dense(dense, "unstructured")

        def make_input(images):
            return torch.randn(images, in_channels, side, side, device="cuda", dtype=dtype)
    else:
        out_features, in_features = shape
        weight = (_weight_24(out_features, in_features, generator) if kernel == "linear24"
                  else _weight(out_features, in_features, sparsity, generator)).to(dtype)
        dense = nn.Linear(in_features, out_features, device="cuda", dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
        sparse = SparseLinear.from_dense(dense, "2:4" if kernel == "linear24" else "unstructured")

        def make_input(rows):
            return torch.randn(rows, in_features, device="cuda", dtype=dtype)
    nbytes = weight.numel() * weight.element_size()
    import copy

    dense_copies = [dense] + [copy.deepcopy(dense) for _ in range(copy_count(nbytes) - 1)]
    sparse_copies = [sparse] + [copy.deepcopy(sparse) for _ in range(copy_count(nbytes) - 1)]
    return dense_copies, sparse_copies, make_input


def run(quick: bool = False, *, repeats: int = 1, progress: bool = False, on_row=None) -> list[dict]:
    """One row per (kernel, dtype, shape, rows, sparsity, repeat); [] without a GPU."""
    ok, _ = available()
    if not ok:
        return []
    generator = torch.Generator(device="cuda").manual_seed(0)
    gpu, arch = torch.cuda.get_device_name(), gpu_arch()
    cases = list(_cases(quick))
    total = sum(len(c[4]) * len(c[5]) for c in cases) * repeats
    rows_out = []
    with progress_bar(total, NAME, progress) as bar, torch.inference_mode():
        for repeat, (kernel, dtype, name, shape, sparsities, rows_list) in itertools.product(range(repeats), cases):
            for sparsity in sparsities:
                dense, sparse, make_input = _modules(kernel, dtype, shape, sparsity, generator)
                for rows in rows_list:
                    x = make_input(rows)
                    dense_us = graph_us([lambda m=m: m(x) for m in dense])
                    sparse_us = graph_us([lambda m=m: m(x) for m in sparse])
                    row = {"gpu": gpu, "arch": arch, "kernel": kernel, "dtype": dtype_name(dtype), "shape": name,
                           "rows": rows, "sparsity": sparsity, "repeat": repeat, "sparse_us": sparse_us,
                           "dense_us": dense_us, "speedup": dense_us / sparse_us}
                    rows_out.append(row)
                    bar.update()
                    if on_row is not None:
                        on_row(row)
                del dense, sparse
                torch.cuda.empty_cache()
    return rows_out


def measured_break_even(rows: list[dict]) -> dict[tuple, float | None]:
    """(kernel, dtype, rows per call) -> the lowest sparsity from which the sparse module wins or
    ties on every shape and repeat at every sparsity above it (None: it loses at the highest)."""
    groups: dict[tuple, dict[float, list[float]]] = {}
    for row in rows:
        groups.setdefault((row["kernel"], row["dtype"], row["rows"]), {}).setdefault(row["sparsity"], []).append(
            row["speedup"])
    measured = {}
    for key, by_sparsity in groups.items():
        lowest = None
        for sparsity in sorted(by_sparsity, reverse=True):
            if min(by_sparsity[sparsity]) < PARITY:
                break
            lowest = sparsity
        measured[key] = lowest
    return measured


def cuda_table(rows: list[dict]) -> dict:
    """This GPU's entry of :data:`prunekit.nn.BREAK_EVEN_SPARSITY_CUDA`: {kernel: {dtype: ((max
    rows, break-even or None), ..., (None, break-even))}}, neighbouring rows counts with the same
    break-even merged, the largest measured one standing for any more."""
    measured = measured_break_even(rows)
    table: dict = {}
    for kernel, dtype in sorted({(k, d) for k, d, _ in measured}):
        entries = sorted((r, measured[(kernel, dtype, r)]) for k, d, r in measured if (k, d) == (kernel, dtype))
        merged: list[tuple] = []
        for rows_per_call, threshold in entries:
            if merged and merged[-1][1] == threshold:
                merged[-1] = (rows_per_call, threshold)
            else:
                merged.append((rows_per_call, threshold))
        merged[-1] = (None, merged[-1][1])
        table.setdefault(kernel, {})[dtype] = tuple(merged)
    return table


def table_source(arch: str, table: dict) -> str:
    """The table as the Python to paste into BREAK_EVEN_SPARSITY_CUDA (dtypes as torch names)."""
    kernels = ", ".join(
        f"{kernel!r}: {{" + ", ".join(f"torch.{dtype}: {entries!r}" for dtype, entries in by_dtype.items()) + "}"
        for kernel, by_dtype in table.items())
    return f"{arch!r}: {{{kernels}}},"


def describe(row: dict) -> str:
    return (f"{row['kernel']:>8} {row['dtype']:>8} {row['shape']:>18} rows {row['rows']:<5} {row['sparsity']:.2f}: "
            f"sparse {row['sparse_us']:8.1f} us, dense {row['dense_us']:8.1f} us ({row['speedup']:5.2f}x)")
