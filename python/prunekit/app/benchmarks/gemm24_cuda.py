"""2:4 sparse linear on the GPU (prunekit.ops.sparse_linear_24) against cuBLAS dense (F.linear) and
torch's to_sparse_semi_structured, bf16, side by side in one process, on the LLM shapes at decode
batches (1-16 rows) and prefill batches (2048, 4096 rows).

The weights rotate through enough copies to exceed twice the L2 cache, so every call streams its
weight from memory as in a model (a single 4096 x 4096 weight would otherwise sit in an H100's
L2). Decode batches are timed as CUDA graphs of many calls (the kernels take microseconds; eager
timing would measure Python and the dispatcher); prefill batches eagerly. The issue's bars are
checked per row: at least 1.2x cuBLAS at batch >= 2048, never below 0.9x at batch 1-16.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .common import compare_ms, progress_bar, summarize_speedups, time_ms
from .shapes import LLAMA_7B, LLAMA_70B
from .common import cuda_available as available  # noqa: F401  (the families' availability probe)

NAME = "gemm24_cuda"
TITLE = "2:4 sparse linear vs cuBLAS dense and torch semi-structured (CUDA, bf16)"
QUICK = "4096 x 4096 only, batches 1, 16 and 2048, short timings"
COLUMNS = ["shape", "batch", "timing", "prunekit_ms", "cublas_ms", "torch24_ms", "speedup", "speedup_vs_torch24",
           "prunekit_TFLOPs", "prunekit_GB_s", "bar"]
SHAPES = {**LLAMA_7B, **LLAMA_70B}
BATCHES = (1, 2, 4, 8, 16, 2048, 4096)
QUICK_BATCHES = (1, 16, 2048)
DECODE_MAX_BATCH = 16
DECODE_BAR, PREFILL_BAR, PREFILL_MIN_BATCH = 0.9, 1.2, 2048
GRAPH_CALLS = 64  # calls per captured graph at decode batches
MAX_COPIES = 16


def _copies(nbytes: int) -> int:
    """Copies of an operand whose rotation exceeds twice the L2 cache."""
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 << 20)
    return max(1, min(MAX_COPIES, math.ceil(2 * l2 / max(nbytes, 1))))


def _weights(out_features: int, in_features: int):
    """A random bf16 2:4 weight on the GPU in the three forms, each as a list of rotating copies:
    dense, prunekit's (values, meta, meta_sm90), torch's semi-structured tensor (None when torch
    cannot build one here)."""
    from prunekit import ops

    dense = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16)
    dense = dense * ops.nm_mask(dense.abs().float(), 2, 4)
    values, meta = ops.compress_24(dense)
    hopper = torch.cuda.get_device_capability() == (9, 0)
    meta_sm90 = ops.meta_24_to_sm90(meta) if hopper else None
    dense_copies = [dense.clone() for _ in range(_copies(dense.numel() * 2))]
    sparse_bytes = values.numel() * 2 + meta.numel() * 2
    ours = [(values.clone(), meta.clone(), None if meta_sm90 is None else meta_sm90.clone())
            for _ in range(_copies(sparse_bytes))]
    try:
        from torch.sparse import to_sparse_semi_structured

        theirs = [to_sparse_semi_structured(dense.clone()) for _ in range(_copies(sparse_bytes))]
    except (RuntimeError, ValueError, NotImplementedError):
        theirs = None
    return dense_copies, ours, theirs


def _graph_ms(calls, min_run_time: float) -> float:
    """Milliseconds per call of a CUDA graph replaying `calls` (GRAPH_CALLS calls, round robin)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (allocations, lazy init)
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(GRAPH_CALLS):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    return time_ms(graph.replay, min_run_time) / GRAPH_CALLS


def _time(candidates: dict, batch: int, min_run_time: float) -> tuple[dict, str]:
    """{name: ms} for each candidate (a list of per-copy calls), and how they were timed."""
    if batch <= DECODE_MAX_BATCH:
        times = {}
        for name, calls in candidates.items():
            try:
                times[name] = _graph_ms(calls, min_run_time)
            except RuntimeError:  # a path that cannot be captured: eagerly, marked in the row
                cycle = itertools.cycle(calls)
                times[name] = time_ms(lambda: next(cycle)(), min_run_time)
                times[f"{name}_eager"] = True
        return times, "graph"
    cycles = {name: itertools.cycle(calls) for name, calls in candidates.items()}
    return compare_ms({name: (lambda c=c: next(c)()) for name, c in cycles.items()}, min_run_time), "eager"


def run(quick: bool = False, *, progress: bool = False, on_row=None) -> list[dict]:
    """One row per (shape, batch); [] when the CUDA kernels cannot run here."""
    ok, _ = available()
    if not ok:
        return []
    from prunekit import ops

    shapes = {"llama7b.q_proj": SHAPES["llama7b.q_proj"]} if quick else SHAPES
    batches = QUICK_BATCHES if quick else BATCHES
    min_run_time = 0.05 if quick else 0.2
    rows = []
    with progress_bar(len(shapes) * len(batches), "bench gemm24 (cuda)", progress) as bar:
        for name, (out_features, in_features) in shapes.items():
            dense, ours, theirs = _weights(out_features, in_features)
            for batch in batches:
                x = torch.randn(batch, in_features, device="cuda", dtype=torch.bfloat16)
                candidates = {
                    "prunekit": [lambda w=w: ops.sparse_linear_24(x, w[0], w[1], in_features, None, w[2])
                                 for w in ours],
                    "cublas": [lambda w=w: F.linear(x, w) for w in dense],
                }
                if theirs is not None:
                    candidates["torch24"] = [lambda w=w: F.linear(x, w) for w in theirs]
                times, timing = _time(candidates, batch, min_run_time)
                rows.append(_row(name, out_features, in_features, batch, times, timing))
                if on_row is not None:
                    on_row(rows[-1])
                bar.update()
            del dense, ours, theirs
            torch.cuda.empty_cache()
    return rows


def _row(shape: str, out_features: int, in_features: int, batch: int, times: dict, timing: str) -> dict:
    ours, cublas, torch24 = times["prunekit"], times["cublas"], times.get("torch24")
    speedup = cublas / ours
    if batch <= DECODE_MAX_BATCH:
        bar = "ok" if speedup >= DECODE_BAR else f"below {DECODE_BAR}x"
    elif batch >= PREFILL_MIN_BATCH:
        bar = "ok" if speedup >= PREFILL_BAR else f"below {PREFILL_BAR}x"
    else:
        bar = "-"
    if any(key.endswith("_eager") for key in times):
        timing += " (eager: " + ", ".join(k[:-6] for k in times if k.endswith("_eager")) + ")"
    weight_bytes = out_features * in_features  # bf16 values: half the entries, 2 bytes each
    return {
        "shape": shape, "batch": batch, "timing": timing,
        "prunekit_ms": ours, "cublas_ms": cublas, "torch24_ms": torch24,
        "speedup": speedup, "speedup_vs_torch24": None if torch24 is None else torch24 / ours,
        "prunekit_TFLOPs": 2 * batch * out_features * in_features / ours / 1e9,  # dense-equivalent
        # + int16 metadata (an eighth of the values' bytes) + x and y
        "prunekit_GB_s": (weight_bytes * 1.125 + 2 * batch * (in_features + out_features)) / ours / 1e6,
        "bar": bar,
    }


def describe(row: dict) -> str:
    torch24 = "-" if row["torch24_ms"] is None else f"{row['torch24_ms']:.4f}"
    return (f"{row['shape']:>18} batch {row['batch']:>5}: prunekit {row['prunekit_ms']:.4f} ms, cuBLAS "
            f"{row['cublas_ms']:.4f} ms, torch 2:4 {torch24} ms, {row['speedup']:.2f}x cuBLAS "
            f"({row['prunekit_GB_s']:.0f} GB/s), bar {row['bar']}")


def summarize(rows: list[dict]) -> list[dict]:
    """Speed-up over cuBLAS and over torch's semi-structured path per batch (geometric mean over
    the shapes)."""
    vs_cublas = summarize_speedups("gemm24_cuda", rows, ["batch"], "speedup", "cuBLAS dense (F.linear)")
    vs_torch = summarize_speedups("gemm24_cuda", rows, ["batch"], "speedup_vs_torch24",
                                  "torch to_sparse_semi_structured")
    return vs_cublas + vs_torch


def bars_missed(rows: list[dict]) -> list[dict]:
    """The rows below the issue's bars."""
    return [row for row in rows if row["bar"] not in ("ok", "-")]
