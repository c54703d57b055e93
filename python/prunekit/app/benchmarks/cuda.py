"""The CUDA kernels, when a CUDA build of prunekit runs on an NVIDIA GPU: the N:M mask and the 2:4
conversions on the GPU against torch's own GPU paths (the CUTLASS-layout converters of
torch.sparse._semi_structured_conversions and a topk mask), side by side in one process."""

from __future__ import annotations


from . import formats
from .common import summarize_speedups
from .shapes import LLAMA_7B, SMALL_LINEAR
from .common import cuda_available as available  # noqa: F401  (the families' availability probe)

QUICK = formats.QUICK
NAME = "formats_cuda"
TITLE = "2:4 conversions and N:M masks vs torch (CUDA)"
COLUMNS = formats.COLUMNS


def run(quick: bool = False, *, progress: bool = False, on_row=None) -> list[dict]:
    """One row per (shape, op, dtype) on the GPU; [] when the CUDA kernels cannot run here."""
    ok, _ = available()
    if not ok:
        return []
    return formats.run(quick, shapes=SMALL_LINEAR if quick else LLAMA_7B, device="cuda",
                       min_run_time=0.05 if quick else 0.2, progress=progress, on_row=on_row)


describe = formats.describe


def summarize(rows: list[dict]) -> list[dict]:
    return summarize_speedups("cuda", rows, ["op"], "speedup", "torch converters (CUDA)")
