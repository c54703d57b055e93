"""What bench/quality_smollm2.py and bench/quality_minilm.py share: the configurations (every
registered method at 50%, 2:4 and 70%, ADMM weight updates, block refinement and low-rank
compensation variants), the loop that prunes a fresh copy of the dense model per configuration
and times it, and the Markdown table."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import json
import time
from collections.abc import Callable

import torch

import prunekit
from prunekit import criteria

SPARSITIES = (0.5, "2:4", 0.7)
# Methods compared at every sparsity, in this order, where registered (others may not have landed).
METHODS = ("magnitude", "wanda", "sparsegpt", "ria", "admm")
UPDATE_AFTER = ("wanda", "ria")  # mask criteria followed by update="admm"
COMPENSATION_BUDGETS = (0.01, 0.025, 0.05)  # fractions of each layer's dense weight bytes


def has_field(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(prunekit.PruneConfig)}


def label(config: dict) -> str:
    """A short name of a configuration: method[+update][ refine][ lowrank budget]."""
    parts = [config["method"] + (f"+{config['update']}" if config.get("update") else "")]
    refine = config.get("refine")
    if refine:
        parts.append("+".join(refine) if isinstance(refine, (tuple, list)) else refine)
    compensate = config.get("compensate")
    if compensate is not None:
        parts.append(f"lowrank{compensate.budget:g}" if compensate.budget is not None else f"rank{compensate.rank}")
    return " ".join(parts)


def configs(refine_options: dict | None = None, quick: bool = False) -> list[dict]:
    """Every registered method of METHODS at every sparsity, update="admm" after UPDATE_AFTER where
    PruneConfig has it, refine="block" after Wanda, SparseGPT and ADMM, then the low-rank
    compensation curve after Wanda and SparseGPT at 50% (and ADMM where registered)."""
    registered = set(criteria.names())
    methods = [m for m in METHODS if m in registered]
    refine_options = refine_options or {}
    rows = []
    for sparsity in SPARSITIES[:2] if quick else SPARSITIES:
        rows += [dict(method=method, sparsity=sparsity) for method in methods]
        if has_field("update"):
            rows += [dict(method=method, sparsity=sparsity, update="admm") for method in UPDATE_AFTER
                     if method in registered]
        rows += [dict(method=method, sparsity=sparsity, refine="block", **refine_options)
                 for method in ("wanda", "sparsegpt", "admm") if method in registered]
    for method in ("wanda", "sparsegpt", "admm"):
        if method in registered:
            rows += [dict(method=method, sparsity=0.5, compensate=prunekit.LowRank(budget=budget))
                     for budget in (COMPENSATION_BUDGETS[-1:] if quick else COMPENSATION_BUDGETS)]
    return rows


def select(rows: list[dict], patterns: list[str] | None) -> list[dict]:
    """The configurations whose "label @ sparsity" matches one of the fnmatch ``patterns``, in the
    order of the patterns."""
    if not patterns:
        return rows
    chosen = []
    for pattern in patterns:  # in the order of the patterns
        chosen += [row for row in rows if row not in chosen and fnmatch.fnmatchcase(f"{label(row)} @ {row['sparsity']}",
                                                                                      pattern)]
    return chosen


def run(dense_model: torch.nn.Module, configs_: list[dict], calib, evaluate: Callable[[torch.nn.Module], dict],
        base: dict | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Prunes a deep copy of ``dense_model`` per configuration (``base`` adds PruneConfig keywords)
    and returns one row per configuration: its label, sparsity, prune seconds, the evaluation's
    fields, the bytes low-rank compensation added and the pruned layers' dense bytes."""
    rows = []
    for config in configs_:
        model = copy.deepcopy(dense_model)
        started = time.perf_counter()
        report = prunekit.prune(model, prunekit.PruneConfig(**{"progress": False, **(base or {}), **config}), calib)
        seconds = time.perf_counter() - started
        pruned_bytes = sum(layer.numel for layer in report.layers) * next(dense_model.parameters()).element_size()
        added = sum(entry.get("bytes", 0) for entry in report.compensation.values())
        row = {"config": label(config), "method": config["method"], "update": config.get("update") or "-",
               "refine": label({"method": "", "refine": config.get("refine")}).strip() or "-",
               "compensate": None if config.get("compensate") is None else dataclasses.asdict(config["compensate"]),
               "sparsity": str(config["sparsity"]), "prune_seconds": round(seconds, 2),
               "achieved_sparsity": report.total_sparsity,
               "reconstruction_error": report.total_reconstruction_error,
               "lowrank_bytes": added, "pruned_layers_dense_bytes": pruned_bytes,
               "lowrank_fraction": added / pruned_bytes if pruned_bytes else 0.0,
               "lowrank_ranks": sorted({entry["rank"] for entry in report.compensation.values()}),
               "refined_blocks_kept": sum(1 for entry in report.block_refinement if entry["kept_step"] > 0),
               **evaluate(model)}
        rows.append(row)
        if on_row is not None:
            on_row(row)
        del model
    return rows


def add_ratios(rows: list[dict], quality: str, dense_value: float, higher_is_better: bool) -> None:
    """Adds ``gap`` (distance to the dense value) and ``gap_ratio`` (gap over the smaller gap of
    Wanda and SparseGPT at the same sparsity, as the issue's bar) to every row."""
    for row in rows:
        row["gap"] = (dense_value - row[quality]) if higher_is_better else (row[quality] - dense_value)
    for row in rows:
        baselines = [other["gap"] for other in rows if other["sparsity"] == row["sparsity"]
                     and other["config"] in ("wanda", "sparsegpt")]
        row["gap_ratio"] = row["gap"] / min(baselines) if baselines and min(baselines) > 0 else None
        baseline_seconds = [other["prune_seconds"] for other in rows if other["sparsity"] == row["sparsity"]
                            and other["config"] == "sparsegpt"]
        row["time_vs_sparsegpt"] = row["prune_seconds"] / baseline_seconds[0] if baseline_seconds else None


def markdown(rows: list[dict], quality: str, quality_title: str) -> str:
    lines = [f"| sparsity | configuration | {quality_title} | gap to dense | gap / best of Wanda, SparseGPT | "
             "prune s | time / SparseGPT | low-rank bytes (% of layers) | ranks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "-" if row.get("gap_ratio") is None else f"{row['gap_ratio']:.3f}"
        time_ratio = "-" if row.get("time_vs_sparsegpt") is None else f"{row['time_vs_sparsegpt']:.2f}"
        lowrank = ("-" if not row["lowrank_bytes"] else
                   f"{row['lowrank_bytes']:,} ({100 * row['lowrank_fraction']:.2f}%)")
        ranks = "-" if not row["lowrank_ranks"] else ",".join(map(str, row["lowrank_ranks"]))
        lines.append(f"| {row['sparsity']} | {row['config']} | {row[quality]:.4f} | {row['gap']:.4f} | {ratio} | "
                     f"{row['prune_seconds']:.1f} | {time_ratio} | {lowrank} | {ranks} |")
    return "\n".join(lines)


def argument_parser(doc: str, quick_help: str, results_name: str) -> argparse.ArgumentParser:
    """The command line both quality scripts share."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--only", nargs="*", help="fnmatch patterns on 'label @ sparsity' (e.g. 'wanda @ 0.5')")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--refine-steps", type=int, default=None, help="PruneConfig.block_refine_steps")
    parser.add_argument("--refine-lr", type=float, default=None, help="PruneConfig.block_refine_lr")
    parser.add_argument("--merge", nargs="*", help="combine the rows of earlier runs (results .json or printed "
                        ".jsonl) into the results instead of pruning")
    parser.add_argument("--name", default=None, help=f"results name (default {results_name}[_quick])")
    return parser


def merge_rows(rows: list[dict], paths: list[str]) -> None:
    """Adds the rows of earlier runs to ``rows``, in the order of :func:`configs`."""
    rows.extend(read_rows(paths))
    order = {(label(c), str(c["sparsity"])): i for i, c in enumerate(configs())}
    rows.sort(key=lambda row: order.get((row["config"], row["sparsity"]), len(order)))


def read_rows(paths: list[str]) -> list[dict]:
    """Rows of earlier runs (results .json files, or .jsonl files of the printed rows), the first
    of each (configuration, sparsity) kept: quality numbers are deterministic, so parts of a long
    run measured separately combine into one table."""
    rows, seen = [], set()
    for path in paths:
        text = open(path).read()
        found = json.loads(text)["rows"] if path.endswith(".json") else [
            json.loads(line) for line in text.splitlines() if line.startswith("{")]
        for row in found:
            key = (row["config"], row["sparsity"])
            if key not in seen:
                seen.add(key)
                rows.append({k: v for k, v in row.items() if k not in ("gap", "gap_ratio", "time_vs_sparsegpt")})
    return rows


def dump(row: dict) -> str:
    return json.dumps(row, default=str)
