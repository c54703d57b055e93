"""all-MiniLM-L6-v2 at 2:4 with ADMM solver options (issue #24's MiniLM bar: mean cosine >= 0.90):
the penalty rho, the damping, the iteration counts and block refinement, on quality_minilm.py's
protocol (128 calibration sentences, 256 held-out ones, mean cosine of the sentence embeddings to
the dense model's). Deterministic; rows are appended to bench/results/<name>.jsonl as they finish
and the Markdown table is rewritten.

    python bench/explore_minilm_issue24.py                       # the default configurations
    python bench/explore_minilm_issue24.py --configs '[{"method": "admm", "sparsity": "2:4", "admm_rho": 0.3}]'
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from _common import RESULTS_DIR, machine_info

DEFAULT_CONFIGS = [
    {"method": "admm", "sparsity": "2:4"},
    {"method": "admm", "sparsity": "2:4", "admm_iterations": 80, "admm_prune_iterations": 60},
    {"method": "admm", "sparsity": "2:4", "admm_percdamp": 0.1},
    {"method": "admm", "sparsity": "2:4", "admm_rho": 0.3},
    {"method": "admm", "sparsity": "2:4", "admm_rho": 0.1},
    {"method": "admm", "sparsity": "2:4", "admm_rho": 0.3, "refine": "block"},
    {"method": "admm", "sparsity": "2:4", "admm_rho": 0.1, "refine": "block"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", help="a JSON list of PruneConfig keyword dicts (default: DEFAULT_CONFIGS)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="quality_minilm_admm_options")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import prunekit
    from prunekit.app import evaluation
    from prunekit.app.demo import load_minilm

    configs = json.loads(args.configs) if args.configs else DEFAULT_CONFIGS
    model, tokenizer = load_minilm()
    calib = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(evaluation.CALIBRATION_MODULES, 128))
    held_out = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(evaluation.EVALUATION_MODULES, 256))
    with torch.no_grad():
        dense = evaluation.sentence_embeddings(model, held_out)
    state = copy.deepcopy(model.state_dict())
    rows_path = RESULTS_DIR / f"{args.name}.jsonl"
    machine = machine_info()
    for config in configs:
        model.load_state_dict(state)
        started = time.perf_counter()
        prunekit.prune(model, prunekit.PruneConfig(progress=False, **config), calib)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            fidelity = evaluation.embedding_fidelity(model, dense, held_out)
        row = {"config": config, "mean_cosine": fidelity["mean_cosine"], "min_cosine": fidelity["min_cosine"],
               "prune_seconds": seconds, "machine": machine}
        print(json.dumps({k: v for k, v in row.items() if k != "machine"}), flush=True)
        with open(rows_path, "a") as rows_file:
            rows_file.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    lines = ["# all-MiniLM-L6-v2 at 2:4: ADMM solver options", "",
             "Mean cosine to the dense embeddings of 256 held-out sentences (128 calibration sentences; "
             "`python bench/explore_minilm_issue24.py`). Prune seconds compare only on a quiet machine.", "",
             "| PruneConfig | mean cosine | min cosine | prune s | commit |", "|---|---|---|---|---|"]
    lines += [f"| `{json.dumps(r['config'])}` | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
              f"{r['prune_seconds']:.1f} | {r['machine'].get('commit', '-')} |" for r in rows]
    (RESULTS_DIR / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
