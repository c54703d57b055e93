"""Benchmark plumbing shared by every family: side-by-side timing in one process, machine info,
speed-up summaries and result files (JSON with the machine + a Markdown table)."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import torch


def time_ms(fn: Callable[[], object], min_run_time: float = 0.5) -> float:
    """Median wall time of fn() in milliseconds (torch.utils.benchmark, blocked autorange, on the
    current number of threads)."""
    import torch.utils.benchmark as benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def cpu_name() -> str:
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def git_commit() -> str:
    """The short commit of the checkout prunekit runs from ("" from an installed wheel)."""
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def machine_info() -> dict:
    """Date, commit, CPU, cores, threads, ISA (detected and selected), torch, prunekit, GPU."""
    import prunekit

    info = prunekit.build_info()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_isa_detected": info["cpu_isa_detected"],
        "cpu_isa_selected": info["cpu_isa_selected"],
        "cpu_features": info["cpu_features"],
        "torch": torch.__version__,
        "prunekit": info["version"],
        "cuda_built": info["cuda_built"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def geomean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize_speedups(benchmark: str, rows: list[dict], keys: list[str], speedup: str, baseline: str) -> list[dict]:
    """One summary row per distinct value of ``keys``: the geometric mean, minimum and maximum of
    the ``speedup`` column over the other columns (shapes), against ``baseline``."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        if row.get(speedup) is not None:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row[speedup])
    return [{"benchmark": benchmark, "case": " ".join(str(v) for v in key), "baseline": baseline,
             "speedup": geomean(values), "min": min(values), "max": max(values), "n": len(values)}
            for key, values in groups.items()]


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    lines = ["| " + " | ".join(headers or columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(directory: str | os.PathLike, name: str, rows: list[dict], columns: list[str], title: str,
                  machine: dict | None = None) -> tuple[Path, Path]:
    """Writes <directory>/<name>.json (machine info + rows) and <directory>/<name>.md (a table)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    machine = machine if machine is not None else machine_info()
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    text = [f"# {title}", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "",
            markdown_table(rows, columns)]
    md_path = directory / f"{name}.md"
    md_path.write_text("\n".join(text) + "\n")
    return json_path, md_path


def progress_bar(total: int, description: str, progress: bool):
    """A tqdm bar on stderr; hidden when ``progress`` is False or stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=None if progress else True, leave=False)


def compare_ms(fns: dict[str, Callable[[], object]], min_run_time: float = 0.3, rounds: int = 3) -> dict[str, float]:
    """Times several functions against each other on a busy machine: ``rounds`` rounds, each
    timing every function in turn (blocked autorange, ``min_run_time / rounds`` seconds); the
    result per function is its fastest round's median in milliseconds. Alternating the functions
    spreads background load over all of them; taking the fastest round filters bursts of it."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], time_ms(fn, min_run_time / rounds))
    return best
