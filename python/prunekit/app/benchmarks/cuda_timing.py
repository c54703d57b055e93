"""GPU timing for the CUDA kernel benchmarks: calls replayed from a CUDA graph (no CPU launch cost
in the figure, for the sparse op and for cuBLAS alike) over weight copies that together exceed the
GPU's L2 cache, so that every call reads its weight from HBM as a model's forward does."""

from __future__ import annotations

from collections.abc import Callable

import torch

L2_FLUSH_FACTOR = 3  # weight copies per case: together at least this many L2 caches
MAX_COPIES = 64


def l2_bytes() -> int:
    return int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 << 20))


def gpu_arch() -> str:
    """"sm80", "sm90", ... of the current GPU (the key of "auto"'s CUDA tables)."""
    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"


def copy_count(nbytes: int) -> int:
    """Weight copies so that each call's weight comes from HBM (at least two)."""
    return max(2, min(MAX_COPIES, -(-L2_FLUSH_FACTOR * l2_bytes() // max(nbytes, 1))))


def graph_us(calls: list[Callable[[], object]], round_seconds: float = 0.02, warmup: int = 3) -> float:
    """Microseconds per call of ``calls`` (one call per weight copy), captured once into a CUDA
    graph and replayed between CUDA events for about ``round_seconds`` (at least 3 and at most 50
    replays); the best of three rounds."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):  # allocator pools, kernel attributes, cuBLAS handles
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    replays = max(3, min(50, int(round_seconds * 1e3 / max(start.elapsed_time(end), 1e-3))))
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / (replays * len(calls)))
    return best
