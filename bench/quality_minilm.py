"""Embedding quality of all-MiniLM-L6-v2 (real pretrained weights, offline) after pruning: every
registered method at 50%, 2:4 and 70%, ADMM weight updates, block refinement and the low-rank
compensation curve, with prune times, in one run on the same calibration data.

Sentence embeddings are mean-pooled over the attention mask and L2-normalised (the
sentence-transformers recipe); quality is the mean cosine between each evaluation sentence's
pruned and dense embeddings. Text: first paragraphs of the docstrings of Python standard library
modules' functions and classes; calibration (128 sentences) and evaluation (256 sentences) come
from disjoint sets of modules (prunekit.app.demo's protocol). The pooler is never pruned.

    python bench/quality_minilm.py            # writes bench/results/quality_minilm.{json,md}
    python bench/quality_minilm.py --quick    # 50% and 2:4, fewer sentences
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import _quality  # noqa: E402


def main() -> None:
    parser = _quality.argument_parser(__doc__, "50%% and 2:4 only, fewer sentences", "quality_minilm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from _common import RESULTS_DIR, machine_info

    from prunekit.app import evaluation
    from prunekit.app.demo import load_minilm

    model, tokenizer = load_minilm()
    calibration_sentences, evaluation_sentences = (64, 128) if args.quick else (128, 256)
    calib = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(evaluation.CALIBRATION_MODULES,
                                                                          calibration_sentences))
    held_out = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(evaluation.EVALUATION_MODULES,
                                                                             evaluation_sentences))
    with torch.no_grad():
        dense = evaluation.sentence_embeddings(model, held_out)

    def evaluate(pruned) -> dict:
        with torch.no_grad():
            return evaluation.embedding_fidelity(pruned, dense, held_out)

    refine_options = {key: value for key, value in (("block_refine_steps", args.refine_steps),
                                                    ("block_refine_lr", args.refine_lr)) if value is not None}
    configs = _quality.select(_quality.configs(refine_options, args.quick), args.only)
    print(f"{len(configs)} configurations", flush=True)
    name = args.name or ("quality_minilm_quick" if args.quick else "quality_minilm")
    machine = machine_info()
    RESULTS_DIR.mkdir(exist_ok=True)
    rows: list[dict] = []

    def write(row: dict | None = None) -> str:
        """Adds a row and rewrites the results (a long run keeps what it has measured)."""
        if row is not None:
            rows.append(row)
            print(_quality.dump(row), flush=True)
        _quality.add_ratios(rows, "mean_cosine", 1.0, higher_is_better=True)
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2,
                                                             default=str) + "\n")
        table = _quality.markdown(rows, "mean_cosine", "mean cosine to dense")
        text = ["# all-MiniLM-L6-v2: sentence-embedding fidelity after pruning", "",
                f"Mean cosine between pruned and dense embeddings of {evaluation_sentences} held-out sentences; "
                f"calibration on {calibration_sentences} other sentences (see prunekit/app/demo.py). gap = 1 - mean "
                "cosine; the ratio divides by the smaller gap of plain Wanda and SparseGPT at the same sparsity. "
                "Prune seconds are only comparable on a quiet machine.", "",
                "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "", table, ""]
        (RESULTS_DIR / f"{name}.md").write_text("\n".join(text))
        return table

    if args.merge:
        _quality.merge_rows(rows, args.merge)
    else:
        _quality.run(model, configs, calib, evaluate, base={"ignore": ["pooler"]}, on_row=write)
    table = write()
    print(table)


if __name__ == "__main__":
    main()
