"""SmolLM2-135M out-of-domain perplexity of the issue #24 recipes (RIA masks, ADMM reconstruction
and weight updates, damping as a regulariser, OWL, 128 calibration windows) beside Wanda and
SparseGPT, with prune times, on prunekit's LLM quality protocol (64 or 128 windows of 128 tokens
of Python docstrings calibrate; 64 windows of the held-out novel evaluate).

Every configuration is pruned from the same dense weights; rows are appended to
bench/results/quality_smollm2_issue24.json as they finish (a rerun skips labels already there, so
an interrupted run resumes) and the Markdown table is rewritten.

    python bench/explore_smollm2_issue24.py                  # every configuration (about an hour)
    python bench/explore_smollm2_issue24.py --only 'ria*@0.5*' 'sparsegpt@*'
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

NAME = "quality_smollm2_issue24"
LOWRANK_BUDGETS = (0.01, 0.025, 0.05)  # low-rank factors' bytes per layer, as a share of its dense bytes


def configurations() -> list[tuple[str, dict, int]]:
    """(label, PruneConfig keywords, calibration windows), baselines first at every sparsity."""
    rows = []
    for sparsity in (0.5, "2:4", 0.7):
        at = f"@{sparsity}"
        base = {"sparsity": sparsity}
        rows += [(f"{method}{at}", {"method": method, **base}, 64) for method in ("wanda", "sparsegpt", "ria")]
        for damp in (0.01, 0.1, 1.0, 3.0, 10.0):
            update = {"update": "admm", "admm_iterations": 10, "admm_percdamp": damp}
            rows += [(f"ria+admm(damp {damp}){at}", {"method": "ria", **base, **update}, 64),
                     (f"wanda+admm(damp {damp}){at}", {"method": "wanda", **base, **update}, 64)]
        rows += [(f"admm(damp {damp}){at}", {"method": "admm", **base, "admm_percdamp": damp}, 64)
                 for damp in (0.01, 0.1, 1.0)]
        rows += [(f"admm(damp 0.1, 20 iterations){at}", {"method": "admm", **base, "admm_percdamp": 0.1,
                                                         "admm_iterations": 20, "admm_prune_iterations": 15}, 64)]
        rows += [(f"{method} block{at}", {"method": method, **base, "refine": "block"}, 64)
                 for method in ("wanda", "ria")]
        admm = {"method": "ria", **base, "update": "admm", "admm_iterations": 10, "admm_percdamp": 1.0}
        rows += [(f"ria+admm(damp 1.0) block{at}", {**admm, "refine": "block"}, 64),
                 (f"ria owl+admm(damp 1.0){at}", {**admm, "allocation": "owl"}, 64),
                 (f"ria+admm(damp 1.0, 30 iterations){at}", {**admm, "admm_iterations": 30}, 64),
                 (f"ria+admm(damp 1.0) 128 windows{at}", admm, 128)]
        rows += [(f"ria+admm(damp 1.0) block({steps} steps, lr {lr:g}){at}",
                  {**admm, "refine": "block", "block_refine_steps": steps, "block_refine_lr": lr}, 64)
                 for steps, lr in ((40, 1e-4), (20, 3e-4), (40, 3e-4))]
        rows += [(f"ria+admm(damp 1.0) block({steps} steps, lr {lr:g}) 128 windows{at}",
                  {**admm, "refine": "block", "block_refine_steps": steps, "block_refine_lr": lr}, 128)
                 for steps, lr in ((10, 3e-4),)]
        rows += [(f"ria+admm(damp 1.0) block(8 steps, lr 0.0003, 1 held-out item) 128 windows{at}",
                  {**admm, "refine": "block", "block_refine_steps": 8, "block_refine_lr": 3e-4,
                   "block_refine_validation": 0.0625}, 128)]
        if sparsity == 0.5:  # cheaper refinement steps: more of them in the same time
            fast = {**admm, "admm_iterations": 0, "admm_pcg_iterations": 10, "refine": "block",
                    "block_refine_lr": 1e-3, "block_refine_validation": 0.0625, "block_refine_batch": 4,
                    "block_refine_norms": True}
            rows += [(f"ria+pcg(damp 1.0) block({steps} steps of 4{', bf16' if bf16 else ''}, lr 0.001, norms) "
                      f"128 windows{at}",
                      {**fast, "block_refine_steps": steps, "block_refine_validate_every": every,
                       **({"block_refine_autocast": "bfloat16"} if bf16 else {})}, 128)
                     for steps, every, bf16 in ((40, 8, False), (72, 12, True))]
            best = {**fast, "block_refine_steps": 72, "block_refine_validate_every": 12,
                    "block_refine_autocast": "bfloat16"}
            rows += [(f"ria+pcg(damp 1.0) block(72 steps of 4, bf16, lr 0.001, norms) lowrank {budget:g} "
                      f"128 windows{at}", {**best, "compensate_budget": budget}, 128) for budget in LOWRANK_BUDGETS]
            # the same curve on the earlier 10-step recipe
            earlier = {**admm, "refine": "block", "block_refine_steps": 10, "block_refine_lr": 3e-4}
            rows += [(f"ria+admm(damp 1.0) block(10 steps, lr 0.0003) lowrank {budget:g} 128 windows{at}",
                      {**earlier, "compensate_budget": budget}, 128) for budget in LOWRANK_BUDGETS]
        if sparsity == 0.7:
            rows += [(f"ria owl{at}", {"method": "ria", **base, "allocation": "owl"}, 64),
                     (f"ria owl+admm(damp 0.1){at}", {"method": "ria", **base, "allocation": "owl", "update": "admm",
                                                      "admm_iterations": 10, "admm_percdamp": 0.1}, 64)]
        rows += [(f"wanda 128 windows{at}", {"method": "wanda", **base}, 128),
                 (f"sparsegpt 128 windows{at}", {"method": "sparsegpt", **base}, 128),
                 (f"ria+admm(damp 0.1) 128 windows{at}", {"method": "ria", **base, "update": "admm",
                                                          "admm_iterations": 10, "admm_percdamp": 0.1}, 128),
                 (f"admm(damp 0.1) 128 windows{at}", {"method": "admm", **base, "admm_percdamp": 0.1}, 128),
                 (f"admm(damp 1.0) 128 windows{at}", {"method": "admm", **base, "admm_percdamp": 1.0}, 128)]
    return rows


def _baseline_labels(windows: int, sparsity: str) -> tuple[str, str]:
    """The Wanda and SparseGPT rows a configuration compares with: the same calibration windows."""
    suffix = "" if windows == 64 else f" {windows} windows"
    return f"wanda{suffix}@{sparsity}", f"sparsegpt{suffix}@{sparsity}"


def markdown(rows: list[dict], dense: float, machine: dict) -> str:
    lines = ["# SmolLM2-135M: issue #24 recipes, out-of-domain perplexity", "",
             "Calibration: Python docstrings (64 or 128 windows x 128 tokens); evaluation: 64 windows of the "
             "held-out novel (another domain). gap = ppl - dense ppl; ratio = gap over the smaller gap of Wanda "
             "and SparseGPT at the same sparsity and calibration windows; x SparseGPT time against SparseGPT on "
             "the same windows. Prune seconds only compare on a quiet machine.", "",
             f"Dense perplexity {dense:.2f}. Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "",
             "Low-rank bytes: the factors `compensate=LowRank(budget=...)` added, as a share of the pruned "
             "layers' dense bytes; ranks: the distinct ranks the layers got.", "",
             "| configuration | PruneConfig | windows | perplexity | gap | ratio | prune s | x SparseGPT time "
             "| low-rank bytes | ranks |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sparsity = row["label"].rsplit("@", 1)[1]
        wanda, sparsegpt = _baseline_labels(row["windows"], sparsity)
        baselines = [r["ppl"] - dense for r in rows if r["label"] in (wanda, sparsegpt)]
        seconds = [r["prune_seconds"] for r in rows if r["label"] == sparsegpt]
        gap = row["ppl"] - dense
        ratio = f"{gap / min(baselines):.2f}" if baselines and min(baselines) > 0 else "-"
        times = f"{row['prune_seconds'] / seconds[0]:.2f}" if seconds else "-"
        added = (f"{row['lowrank_bytes']:,} ({100 * row['lowrank_fraction']:.2f}%)" if row.get("lowrank_bytes")
                 else "-")
        ranks = ",".join(map(str, row["lowrank_ranks"])) if row.get("lowrank_ranks") else "-"
        lines.append(f"| {row['label']} | `{json.dumps(row['config'])}` | {row['windows']} | {row['ppl']:.2f} | "
                     f"{gap:.2f} | {ratio} | {row['prune_seconds']:.1f} | {times} | {added} | {ranks} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="fnmatch patterns on the labels (e.g. 'ria*@0.5')")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--name", default=NAME, help=f"results/<name>.{{json,md}} (default {NAME})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from _common import RESULTS_DIR, machine_info

    import prunekit
    from prunekit.app.evaluation import lm_quality_batches, perplexity
    from prunekit.hf import load_model

    model, tokenizer, _ = load_model("smollm2")
    model.eval()
    path = RESULTS_DIR / f"{args.name}.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    rows = saved.get("rows", [])
    machine = machine_info()
    batches = {}
    with torch.no_grad():
        dense = perplexity(model, lm_quality_batches(tokenizer)[1])
    for label, config, windows in configurations():
        if args.only and not any(fnmatch.fnmatchcase(label, pattern) for pattern in args.only):
            continue
        if any(row["label"] == label for row in rows):
            continue
        if windows not in batches:
            batches[windows] = lm_quality_batches(tokenizer, nsamples=windows)
        calib, held_out = batches[windows]
        options = dict(config)
        budget = options.pop("compensate_budget", None)
        if budget is not None:
            options["compensate"] = prunekit.LowRank(budget=budget)
        pruned = copy.deepcopy(model)  # compensation replaces modules: every row starts from the dense model
        started = time.perf_counter()
        report = prunekit.prune(pruned, prunekit.PruneConfig(progress=False, **options), calib)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            ppl = perplexity(pruned, held_out)
        del pruned
        layer_bytes = sum(layer.numel for layer in report.layers) * next(model.parameters()).element_size()
        added = sum(entry.get("bytes", 0) for entry in report.compensation.values())
        rows.append({"label": label, "config": config, "windows": windows, "ppl": ppl, "prune_seconds": seconds,
                     "lowrank_bytes": added, "lowrank_fraction": added / layer_bytes if layer_bytes else 0.0,
                     "lowrank_ranks": sorted({entry["rank"] for entry in report.compensation.values()})})
        print(json.dumps(rows[-1]), flush=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({"machine": machine, "dense": dense, "rows": rows}, indent=2) + "\n")
        temporary.replace(path)
        markdown_path = RESULTS_DIR / f"{args.name}.md"
        temporary = markdown_path.with_suffix(".md.tmp")
        temporary.write_text(markdown(rows, dense, machine))
        temporary.replace(markdown_path)


if __name__ == "__main__":
    main()
