"""SmolLM2-135M-Instruct perplexity after pruning: every registered method at 50%, 2:4 and 70%,
ADMM weight updates, block refinement and the low-rank compensation curve, with prune times, in
one run on the same calibration data.

The protocol (prunekit.app.evaluation.lm_quality_batches): 64 windows of 128 tokens of Python
docstrings calibrate; perplexity on 64 windows of 128 tokens of held-out English prose (another
domain) evaluates, so a method that only fits the calibration domain shows it. Quality numbers
are deterministic; prune seconds need a quiet machine.

    python bench/quality_smollm2.py                       # writes bench/results/quality_smollm2.{json,md}
    python bench/quality_smollm2.py --only 'wanda*@ 0.5'  # a subset (fnmatch on "label @ sparsity")
    python bench/quality_smollm2.py --calib samples --only 'wanda @*' 'sparsegpt @*'  # self-calibration
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import _quality  # noqa: E402


def main() -> None:
    parser = _quality.argument_parser(__doc__, "50%% and 2:4 only, one compensation budget", "quality_smollm2")
    parser.add_argument("--calib", choices=("docstrings", "samples"), default="docstrings",
                        help="calibrate on the protocol's docstrings, or on as many sequences the dense model samples "
                             "from its BOS token (prunekit.recovery.teacher_samples, seed 0)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from _common import RESULTS_DIR, machine_info

    from prunekit.app.evaluation import lm_quality_batches, perplexity
    from prunekit.hf import load_model

    stored = [json.loads(Path(path).read_text()).get("dense_perplexity") for path in args.merge or []
              if path.endswith(".json")]
    if args.merge and any(value is not None for value in stored):  # a merge needs no model
        dense = next(value for value in stored if value is not None)
        print(f"dense perplexity {dense:.4f} (stored); merging {len(args.merge)} runs", flush=True)
    else:
        model, tokenizer, _ = load_model("smollm2")
        model.eval()
        calib, heldout = lm_quality_batches(tokenizer)
        if args.calib == "samples":
            from _common import sampled_like

            calib = sampled_like(model, tokenizer, calib)

        def evaluate(pruned) -> dict:
            with torch.no_grad():
                return {"perplexity": perplexity(pruned, heldout)}

        refine_options = {key: value for key, value in (("block_refine_steps", args.refine_steps),
                                                        ("block_refine_lr", args.refine_lr)) if value is not None}
        configs = _quality.select(_quality.configs(refine_options, args.quick), args.only)
        dense = evaluate(model)["perplexity"]
        print(f"dense perplexity {dense:.4f}; {len(configs)} configurations", flush=True)
    name = args.name or ("quality_smollm2_quick" if args.quick else "quality_smollm2") + (
        "_self_calibration" if args.calib == "samples" else "")
    source = ("64 sequences of 128 tokens that the dense model samples from its BOS token" if args.calib == "samples"
              else "64 x 128 tokens of Python docstrings")
    machine = machine_info()
    RESULTS_DIR.mkdir(exist_ok=True)
    rows: list[dict] = []

    def write(row: dict | None = None) -> str:
        """Adds a row and rewrites the results (a long run keeps what it has measured)."""
        if row is not None:
            rows.append(row)
            print(_quality.dump(row), flush=True)
        _quality.add_ratios(rows, "perplexity", dense, higher_is_better=False)
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"machine": machine, "dense_perplexity": dense,
                                                             "rows": rows}, indent=2, default=str) + "\n")
        table = _quality.markdown(rows, "perplexity", "perplexity")
        text = ["# SmolLM2-135M-Instruct: held-out perplexity after pruning", "",
                f"Dense perplexity {dense:.4f}. Calibration: {source}; evaluation: 64 x "
                "128 tokens of held-out English prose (another domain). gap = perplexity - dense; the ratio divides "
                "by the smaller gap of plain Wanda and SparseGPT at the same sparsity. Low-rank bytes: the factors "
                "added, as a share of the pruned layers' dense bytes (per layer at most the budget). Prune seconds "
                "are only comparable on a quiet machine.", "",
                "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "", table, ""]
        (RESULTS_DIR / f"{name}.md").write_text("\n".join(text))
        return table

    if args.merge:
        _quality.merge_rows(rows, args.merge)
    else:
        _quality.run(model, configs, calib, evaluate, on_row=write)
    table = write()
    print(table)


if __name__ == "__main__":
    main()
