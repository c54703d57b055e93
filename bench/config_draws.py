"""Two values of one PruneConfig option on SmolLM2-135M over calibration draws: held-out
perplexity and prune seconds of each, the same draw for both, in one run.

``--option within_block`` (default): "parallel" against "sequential", which runs each block once
instead of twice (a dense statistics pass and a pruned output pass), so it prunes faster; this
measures what it costs in quality. ``--option linear_backend``: the calibration forwards' GEMMs
by ATen (MKL) against oneDNN, which differ by float rounding; this measures how far that rounding
moves the result. Each draw is the protocol of ``lm_quality_batches`` (64 windows of 128
docstring tokens, batches of 8) with another seed; perplexity on the held-out prose. Seconds need
a quiet machine; perplexities are deterministic. Writes bench/results/<option>_draws.{md,json}.

    python bench/config_draws.py                     # within_block, wanda and sparsegpt, seeds 0-2
    python bench/config_draws.py --methods wanda --seeds 1 2 3
    python bench/config_draws.py --option linear_backend
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


# The option's baseline value first, then the value compared with it.
VALUES = {"within_block": ("parallel", "sequential"), "linear_backend": ("aten", "onednn")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--option", choices=sorted(VALUES), default="within_block")
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="calibration draws")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from _common import machine_info

    import prunekit
    from prunekit.app.evaluation import lm_quality_batches, perplexity
    from prunekit.app.report import markdown_table
    from prunekit.hf import load_model

    base, tokenizer, _ = load_model("smollm2")
    base.eval()
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            calib, heldout = lm_quality_batches(tokenizer, seed=seed)
            row = {"method": method, "sparsity": args.sparsity, "seed": seed}
            baseline, other = VALUES[args.option]
            for value in (baseline, other):
                model = copy.deepcopy(base)
                config = prunekit.PruneConfig(method=method, sparsity=args.sparsity, progress=False,
                                              **{args.option: value})
                started = time.perf_counter()
                prunekit.prune(model, config, calib)
                row[f"{value} s"] = round(time.perf_counter() - started, 1)
                with torch.no_grad():
                    row[f"{value} ppl"] = round(perplexity(model, heldout), 3)
                del model
            row["ppl change"] = f"{row[f'{other} ppl'] / row[f'{baseline} ppl'] - 1:+.1%}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    machine = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.option}_draws"
    (args.out / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    lines = [f"# PruneConfig.{args.option} over calibration draws: SmolLM2-135M", "",
             "Machine: " + ", ".join(f"{key}={value}" for key, value in machine.items()), "",
             f"`python bench/config_draws.py --option {args.option} --methods {' '.join(args.methods)} --seeds "
             f"{' '.join(map(str, args.seeds))}`: {args.threads} threads, 64 x 128 docstring tokens per draw "
             "(lm_quality_batches' seed), perplexity on the held-out prose; seconds of prunekit.prune.", "",
             markdown_table(rows, [(key, key, "") for key in rows[0]])]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / f'{name}.md'}")


if __name__ == "__main__":
    main()
