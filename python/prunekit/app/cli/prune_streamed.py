"""``prunekit prune`` streamed: the model directory is pruned block by block with
:func:`prunekit.prune_pretrained` (the default where it applies; ``--in-memory`` opts out), which
writes the Hugging Face directory, or with ``--sparsify`` the prunekit compressed checkpoint (each
layer's runtime format is chosen when it is loaded).

The quality before and after is measured by loading the dense model, then the pruned output, one at
a time (never both); ``--no-eval`` skips that, and then no whole model is ever in memory.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import torch

import prunekit
from prunekit import distributed
from prunekit.calibrate.timing import StageTimer
from prunekit.hf import CAUSAL_SUFFIXES, load_model, resolve_model
from prunekit.streaming import build_skeleton
from prunekit.streaming.source import INDEX_FILE, SINGLE_FILE

from .. import evaluation
from ..benchmarks.common import machine_info
from .data import calibration_batches, evaluation_batches
from .prune import set_fields

logger = logging.getLogger(__name__)


def streaming_blocker(args, config_kwargs: dict) -> str | None:
    """Why this run cannot be streamed, or None when it can."""
    if args.sparsify and args.format != "auto":
        return (f"--format {args.format} makes sparsify_ swap every pruned layer for one holding that format, which "
                "needs the model in memory (a streamed --sparsify stores each layer smallest-exact and its runtime "
                "format is chosen at load: --format auto)")
    if getattr(args, "calib_samples", False):
        return "--calib-samples samples the calibration sequences from the whole model"
    config = prunekit.PruneConfig(**config_kwargs)
    if "gradients" in config.criterion.needs:
        return f"--method {config.method_name} needs gradients of the whole model"
    if config.effective_allocation == "global":
        return "--allocation global ranks every layer at once"
    directory = Path(resolve_model(args.model))
    if not directory.is_dir():
        return "MODEL is a hub id, not a local directory"
    if not ((directory / SINGLE_FILE).is_file() or (directory / INDEX_FILE).is_file()):
        return "MODEL has no safetensors weights (model.safetensors or its index)"
    return None


def _compute_dtype(directory: Path, name: str) -> str:
    if name != "auto":
        return name
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    stored = config.get("dtype") or config.get("torch_dtype")
    return stored if stored in ("float32", "bfloat16", "float16") else "float32"


def _tokenizer(directory: Path):
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as error:  # no tokenizer files, or an unusable one
        logger.debug("no tokenizer in %s: %s", directory, error)
        return None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def run_streamed(args, sparsity, config_kwargs: dict, out: Path, torchrun: bool = False) -> int:
    """The streamed counterpart of ``prune._prune_run``; under torchrun every rank streams the
    blocks over its share of the calibration items and rank 0 writes the checkpoint and report."""
    from .prune import CHECKPOINT_FORMATS, _default_ignore, _print_prune_summary, _write_prune_report, run_timings

    started = time.perf_counter()
    out_format = "prunekit" if args.sparsify else "hf"
    stages = StageTimer()  # evaluation and pruning (which loads and writes the blocks as it streams)
    directory = Path(resolve_model(args.model))
    dtype = _compute_dtype(directory, args.dtype)
    skeleton = build_skeleton(directory, getattr(torch, dtype))  # no storage: names and config only
    causal = type(skeleton).__name__.endswith(CAUSAL_SUFFIXES)
    tokenizer = _tokenizer(directory)
    calib, calib_info = calibration_batches(args, skeleton, tokenizer, causal)
    ignore = list(args.ignore) if args.ignore is not None else _default_ignore(skeleton)
    config = prunekit.PruneConfig(ignore=ignore, **config_kwargs)
    quality, dense_embeddings = None, None
    if not args.no_eval:
        eval_batches, eval_source = evaluation_batches(args.eval_data, skeleton, tokenizer, causal, args.eval_samples,
                                                       args.seqlen, args.seed, args.batch_size)
        quality = {"source": eval_source}
        evaluation_started = time.perf_counter()
        dense, _, _ = load_model(str(directory), dtype)
        if causal:
            quality.update(metric="perplexity", dense=evaluation.perplexity(dense, eval_batches, not args.quiet))
        else:
            dense_embeddings = evaluation.sentence_embeddings(dense, eval_batches, not args.quiet)
            quality.update(metric="mean_cosine", dense=1.0)
        del dense
        gc.collect()
        stages.seconds["evaluation"] = time.perf_counter() - evaluation_started
    logger.info("pruning with %s at %s (%s allocation), streamed block by block", args.method, sparsity,
                args.allocation)
    with stages.stage("pruning"):
        report = prunekit.prune_pretrained(directory, config, calib, out / "model", dtype=dtype, out_format=out_format)
    if quality is not None:
        evaluation_started = time.perf_counter()
        pruned, _, _ = load_model(str(out / "model"), dtype)
        if causal:
            quality["pruned"] = evaluation.perplexity(pruned, eval_batches, not args.quiet)
        else:
            fidelity = evaluation.embedding_fidelity(pruned, dense_embeddings, eval_batches, not args.quiet)
            quality.update(pruned=fidelity["mean_cosine"], min_cosine=fidelity["min_cosine"])
        del pruned
        stages.seconds["evaluation"] += time.perf_counter() - evaluation_started
    if torchrun and not distributed.is_main_process():
        return 0
    result = {
        "command": "prune", "model": args.model, "model_class": type(skeleton).__name__, "causal_lm": causal,
        "config": {"method": args.method, "sparsity": sparsity, "allocation": args.allocation, "refine": args.refine,
                   "ignore": ignore, "seed": args.seed, "dtype": args.dtype, **set_fields(args)},
        "calibration": calib_info, "quality": quality, "streamed": True,
        "checkpoint": {"path": "model", "format": CHECKPOINT_FORMATS[out_format]},
        "prune": report.to_dict(), "machine": machine_info(), "seconds": time.perf_counter() - started,
        "timings": run_timings(stages.seconds, report.timings, time.perf_counter() - started),
    }
    result["files"] = _write_prune_report(out, result)
    _print_prune_summary(result, report, out)
    return 0
