"""Embedding quality of all-MiniLM-L6-v2 (real pretrained weights, offline) after pruning.

Sentence embeddings are mean-pooled over the attention mask and L2-normalised (the
sentence-transformers recipe); quality is the mean cosine between each evaluation sentence's
pruned and dense embeddings. Text: first paragraphs of the docstrings of Python standard library
modules' functions and classes (real English, available offline); calibration and evaluation
sentences come from disjoint sets of modules.

    python bench/quality_minilm.py            # writes bench/results/quality_minilm.{json,md}
    python bench/quality_minilm.py --quick    # fewer configurations and sentences
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from prunekit.app.demo import default_configs, minilm_quality, quality_markdown  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer configurations and sentences")
    args = parser.parse_args()
    from _common import RESULTS_DIR, machine_info

    rows = minilm_quality(default_configs(args.quick), *((64, 128) if args.quick else (128, 256)),
                          on_row=lambda row: print(json.dumps(row), flush=True))
    name = "quality_minilm_quick" if args.quick else "quality_minilm"
    RESULTS_DIR.mkdir(exist_ok=True)
    machine = machine_info()
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    text = ["# all-MiniLM-L6-v2: sentence-embedding fidelity after pruning", "",
            "Mean cosine between pruned and dense embeddings of held-out sentences; calibration on other "
            "sentences (see prunekit/app/demo.py). Layer rel. error: sum over layers of ||X dW^T||^2 over "
            "sum of ||X W^T||^2 on the calibration inputs.", "",
            "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "", quality_markdown(rows), ""]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(text))
    print(quality_markdown(rows))


if __name__ == "__main__":
    main()
