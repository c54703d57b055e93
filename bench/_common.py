"""Benchmark plumbing: side-by-side timing in one process and result files with machine info."""

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

import prunekit

RESULTS_DIR = Path(__file__).parent / "results"


def time_ms(fn, min_run_time: float = 0.5) -> float:
    """Median wall time of fn() in milliseconds (torch.utils.benchmark, blocked autorange)."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def machine_info() -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = prunekit.build_info()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "cpu": cpu,
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


def write_results(name: str, rows: list[dict], columns: list[str], title: str) -> tuple[Path, Path]:
    """Writes results/<name>.json (machine info + rows) and results/<name>.md (a table)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    machine = machine_info()
    json_path = RESULTS_DIR / f"{name}.json"
    json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [f"# {title}", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    md_path = RESULTS_DIR / f"{name}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
