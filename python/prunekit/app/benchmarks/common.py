"""Benchmark plumbing shared by every family: side-by-side timing in one process, machine info,
speed-up summaries and result files (JSON with the machine + a Markdown table)."""

from __future__ import annotations

import datetime
import itertools
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


DEFAULT_CACHE_BYTES = 64 << 20  # where the machine does not report its caches


def largest_cache_bytes() -> int:
    """The size of the largest CPU cache the machine reports (Linux sysfs: the last-level cache);
    :data:`DEFAULT_CACHE_BYTES` where it reports none."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=DEFAULT_CACHE_BYTES)


def copies_totalling(make: Callable[[], object], total_bytes: int, nbytes_of: Callable[[object], int],
                     max_copies: int = 1024) -> list:
    """Copies from ``make()`` until they hold ``total_bytes`` together (each ``nbytes_of(copy)``,
    measured on the first), at least two and at most ``max_copies``."""
    first = make()
    count = min(max_copies, max(2, math.ceil(total_bytes / max(nbytes_of(first), 1))))
    return [first] + [make() for _ in range(count - 1)]


def cold_copies(make: Callable[[], object], nbytes: int, cache_bytes: int | None = None,
                max_copies: int = 1024) -> Callable[[], object]:
    """XNNPACK's cold-cache rotation: copies from ``make()`` (each ``nbytes``) until together they
    exceed the largest cache (``cache_bytes``, default :func:`largest_cache_bytes`), at least two
    and at most ``max_copies`` (weights under ~0.5 MiB then stay partly cached); returns a function
    that hands them out in turn. A timed function that takes its weight from it
    reads the weight from memory on every call, as a model's forward does (a model's weights do not
    fit in any cache, and a weight reused call after call stays partly in a shared last-level cache
    as far as the machine's other load leaves it room, so that results vary from day to day)."""
    cache_bytes = largest_cache_bytes() if cache_bytes is None else cache_bytes
    return itertools.cycle(copies_totalling(make, cache_bytes + 1, lambda _: nbytes, max_copies)).__next__


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
    """The short commit of the checkout prunekit runs from; where there is none (an installed
    wheel, a tree copied without .git to a GPU machine), $PRUNEKIT_COMMIT or ""."""
    fallback = os.environ.get("PRUNEKIT_COMMIT", "")[:12]
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return fallback
    return result.stdout.strip() if result.returncode == 0 else fallback


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


def cuda_available() -> tuple[bool, str]:
    """(True, "") when prunekit's CUDA kernels can run here, else (False, why not): the probe of
    every CUDA benchmark family."""
    import prunekit

    if not prunekit.build_info()["cuda_built"]:
        return False, "prunekit was built without CUDA"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, ""
