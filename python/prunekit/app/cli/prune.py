"""``prunekit prune``: prune a Hugging Face model (alone or under torchrun), measure its quality
before and after, and write the pruned checkpoint and a report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import prunekit
from prunekit import criteria, distributed
from prunekit.allocation import ALLOCATIONS
from prunekit.calibrate.timing import StageTimer
from prunekit.hf import load_model, resolve_model
from prunekit.prune_config import WITHIN_BLOCK
from prunekit.surgery import SparsifyConfig

from .. import evaluation
from .. import report as reports
from ..benchmarks.common import machine_info
from .common import DTYPES, UsageError, add_calibration_arguments, parse_sparsity, positive_int, prepare_output
from .data import calibration_batches, check_text_files, evaluation_batches

logger = logging.getLogger(__name__)

PRUNE_FILES = ("model", "report.json", "report.md", "layers.png", "quality_vs_sparsity.png")
CHECKPOINT_FORMATS = {"hf": "Hugging Face, masked dense weights (from_pretrained)",
                      "prunekit": "prunekit compressed (prunekit.load)"}


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``prune`` command and its options to ``commands`` (the subparsers of ``prunekit``)."""
    parser = commands.add_parser(
        "prune", parents=[common], help="prune a Hugging Face model; write the checkpoint and a report",
        description="Prune MODEL (a local Hugging Face model directory, or a hub id 'org/name' when the hub is "
                    "reachable) and write the pruned checkpoint (DIR/model), report.json, report.md and PNG plots "
                    "into DIR. Calibration text defaults to standard-library docstrings (offline); a model without "
                    "a tokenizer calibrates on seeded random token ids. Launch under torchrun for several "
                    "processes: torchrun --nproc-per-node 2 -m prunekit prune ...")
    parser.add_argument("model", metavar="MODEL", help="local model directory or hub id")
    parser.add_argument("--method", required=True, choices=criteria.names(), help="pruning criterion")
    parser.add_argument("--sparsity", required=True, help="fraction in [0, 1) (e.g. 0.5) or n:m (e.g. 2:4)")
    parser.add_argument("--allocation", default="uniform", choices=ALLOCATIONS,
                        help="per-layer sparsity allocation (unstructured only; default uniform)")
    parser.add_argument("--refine", choices=("dsnot", "block"), default=None,
                        help="dsnot: mask refinement of a criterion; block: a few optimiser steps per block on the "
                             "kept weights towards the dense block's outputs (see PruneConfig.refine)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", dest="config_fields",
                        help="any other PruneConfig field (repeatable; VALUE is JSON, else a string), e.g. "
                             "--set update=admm --set admm_percdamp=1.0 --set block_refine_steps=72")
    parser.add_argument("--within-block", choices=WITHIN_BLOCK, default="parallel",
                        help="parallel: each block's layers calibrate on its dense forward (the reference methods); "
                             "sequential: each on inputs through the block's layers pruned before it, one forward "
                             "per block (faster; see PruneConfig.within_block)")
    parser.add_argument("--ignore", action="append", metavar="PATTERN",
                        help="layer name pattern not to prune (repeatable; default: lm_head and pooler when present)")
    add_calibration_arguments(parser, 128, seed="seed of calibration sampling and random criteria")
    parser.add_argument("--sparsify", action="store_true",
                        help="save a prunekit compressed checkpoint (pruned layers stored compressed; streamed runs "
                             "write it block by block)")
    parser.add_argument("--format", default="auto", choices=("auto", "2:4", "unstructured"),
                        help="format of the sparse layers with --sparsify: auto (per layer, chosen where the "
                             "checkpoint is loaded: sparse only where prunekit's CPU kernel beats dense torch), 2:4 or "
                             "unstructured (these prune in memory) (default auto)")
    parser.add_argument("--eval-data", type=Path, metavar="FILE",
                        help="held-out text for the before/after quality (default: standard-library docstrings)")
    parser.add_argument("--eval-samples", type=positive_int, default=64,
                        help="evaluation sequences (default 64)")
    parser.add_argument("--no-eval", action="store_true", help="skip the before/after quality measurement")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="dtype to load and prune in (default float32)")
    parser.add_argument("--device", default=None, help="device the blocks run on (default: where the model is)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace prunekit's files in an existing DIR")
    parser.add_argument("--in-memory", action="store_true",
                        help="load the whole model before pruning (default: stream it block by block from its "
                             "safetensors files where possible; see prunekit.prune_pretrained)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sparsity = parse_sparsity(args.sparsity)
    config_kwargs = dict(method=args.method, sparsity=sparsity, allocation=args.allocation, refine=args.refine,
                         within_block=args.within_block,
                         seed=args.seed, progress=not args.quiet, device=args.device)
    config_kwargs.update(set_fields(args))
    prunekit.PruneConfig(**config_kwargs)  # validates the combination before anything is loaded
    resolve_model(args.model)
    check_text_files(args)
    if not distributed.init_from_env():  # a single process (no torchrun)
        out = reports.prepare_output_dir(args.out, args.overwrite, PRUNE_FILES)
        if not args.in_memory:
            from .prune_streamed import run_streamed, streaming_blocker

            blocker = streaming_blocker(args, config_kwargs)
            if blocker is None:
                return run_streamed(args, sparsity, config_kwargs, out)
            logger.info("pruning in memory: %s", blocker)
        return _prune_run(args, sparsity, config_kwargs, out, torchrun=False)
    # Under torchrun: rank 0 prepares --out; every rank learns whether that failed, and stops if so.
    try:
        prepare_output(args, PRUNE_FILES, torchrun=True)
        if not args.in_memory:
            from .prune_streamed import run_streamed, streaming_blocker

            blocker = streaming_blocker(args, config_kwargs)
            if blocker is None:  # every rank streams the blocks; rank 0 writes
                return run_streamed(args, sparsity, config_kwargs, Path(args.out), torchrun=True)
            logger.info("pruning in memory: %s", blocker)
        return _prune_run(args, sparsity, config_kwargs, Path(args.out), torchrun=True)
    finally:
        distributed.shutdown()


# PruneConfig fields with their own option, and fields that are objects, not values a command
# line can give.
_OWN_OPTION = {"method", "sparsity", "allocation", "refine", "within_block", "seed", "progress", "device", "ignore"}
_NOT_SETTABLE = {"loss_fn", "process_group", "gblm_loss", "compensate", "distributed"}


def set_fields(args: argparse.Namespace) -> dict:
    """The ``--set FIELD=VALUE`` items as PruneConfig keywords: VALUE parsed as JSON where it is
    JSON (numbers, true/false, null, lists), else taken as a string. UsageError for an item without
    "=", a field PruneConfig does not have, or one that has its own option."""
    fields = {field.name for field in dataclasses.fields(prunekit.PruneConfig)} - _NOT_SETTABLE
    chosen = {}
    for item in args.config_fields or ():
        name, equals, text = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UsageError(f"--set: expected FIELD=VALUE, but got {item!r}")
        if name in _OWN_OPTION:
            raise UsageError(f"--set: {name} has its own option (--{name.replace('_', '-')}); got --set {item}")
        if name not in fields:
            raise UsageError(f"--set: got {name!r}, but expected a PruneConfig field a command line can set: "
                             f"{', '.join(sorted(fields - _OWN_OPTION))}")
        try:
            chosen[name] = json.loads(text)
        except json.JSONDecodeError:
            chosen[name] = text
    return chosen


def _prune_run(args, sparsity, config_kwargs, out: Path, torchrun: bool) -> int:
    started = time.perf_counter()
    is_main = not torchrun or distributed.is_main_process()
    stages = StageTimer()  # loading, evaluation, pruning, sparsify, saving
    with stages.stage("loading"):
        model, tokenizer, causal = load_model(args.model, args.dtype)
        calib, calib_info = calibration_batches(args, model, tokenizer, causal)
    ignore = list(args.ignore) if args.ignore is not None else _default_ignore(model)
    config = prunekit.PruneConfig(ignore=ignore, **config_kwargs)
    quality = None
    if not args.no_eval:
        with stages.stage("evaluation"):
            eval_batches, eval_source = evaluation_batches(args.eval_data, model, tokenizer, causal, args.eval_samples,
                                                           args.seqlen, args.seed, args.batch_size)
            quality = {"source": eval_source}
            if causal:
                quality.update(metric="perplexity", dense=evaluation.perplexity(model, eval_batches, not args.quiet))
            else:
                dense_embeddings = evaluation.sentence_embeddings(model, eval_batches, not args.quiet)
                quality.update(metric="mean_cosine", dense=1.0)
    logger.info("pruning with %s at %s (%s allocation)", args.method, sparsity, args.allocation)
    with stages.stage("pruning"):
        report = prunekit.prune(model, config, calib)
    if quality is not None:
        with stages.stage("evaluation"):
            if causal:
                quality["pruned"] = evaluation.perplexity(model, eval_batches, not args.quiet)
            else:
                fidelity = evaluation.embedding_fidelity(model, dense_embeddings, eval_batches, not args.quiet)
                quality.update(pruned=fidelity["mean_cosine"], min_cosine=fidelity["min_cosine"])
    checkpoint = {"path": "model"}
    if args.sparsify:
        with stages.stage("sparsify"):
            summary = prunekit.sparsify_(model, SparsifyConfig(format=args.format))
        logger.info("%s", summary)
        checkpoint["format"] = CHECKPOINT_FORMATS["prunekit"]
        checkpoint["sparsify"] = summary.to_dict()
    else:
        checkpoint["format"] = CHECKPOINT_FORMATS["hf"]
    with stages.stage("saving"):
        _save_checkpoint(model, tokenizer, out / "model", args.sparsify, torchrun)  # every rank takes part
    if is_main:
        result = {
            "command": "prune", "model": args.model, "model_class": type(model).__name__, "causal_lm": causal,
            "config": {"method": args.method, "sparsity": sparsity, "allocation": args.allocation,
                       "refine": args.refine, "ignore": ignore, "seed": args.seed, "dtype": args.dtype,
                       **set_fields(args)},
            "calibration": calib_info, "quality": quality, "checkpoint": checkpoint, "prune": report.to_dict(),
            "machine": machine_info(), "seconds": time.perf_counter() - started,
            "timings": run_timings(stages.seconds, report.timings, time.perf_counter() - started),
        }
        result["files"] = _write_prune_report(out, result)
        _print_prune_summary(result, report, out)
    return 0


def run_timings(stages: dict[str, float], prune_timings: dict[str, float], total: float) -> dict[str, float]:
    """The command's seconds per stage: loading, evaluation, the pruning's own stages
    (PruneReport.timings, "prune_" prefixed), sparsify, saving, the rest, total (a stage the run
    did not have separately is left out: a streamed run loads and saves inside the pruning)."""
    timings = {stage: stages[stage] for stage in ("loading", "evaluation") if stage in stages}
    timings.update({f"prune_{stage}": seconds for stage, seconds in prune_timings.items() if stage != "total"})
    timings["prune_total"] = stages.get("pruning", prune_timings.get("total", 0.0))
    for stage in ("sparsify", "saving"):
        if stage in stages:
            timings[stage] = stages[stage]
    timings["other"] = max(total - sum(stages.values()), 0.0)
    timings["total"] = total
    return {stage: round(seconds, 3) for stage, seconds in timings.items()}


def _default_ignore(model) -> list[str]:
    """Do not prune an LM head or a pooler (the usual practice)."""
    names = {name for name, _ in model.named_modules()}
    return [name for name in ("lm_head", "pooler") if name in names]


def _save_checkpoint(model, tokenizer, path: Path, sparsified: bool, torchrun: bool) -> None:
    def write(target: str) -> None:
        if sparsified:
            prunekit.save(model, target)
        else:
            model.save_pretrained(target)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)

    if torchrun:
        distributed.save_checkpoint(path, write)  # rank 0 writes, atomically, once every rank got there
    else:
        write(os.fspath(path))
    logger.info("wrote the pruned checkpoint to %s", path)


def _write_prune_report(out: Path, result: dict) -> list[str]:
    prune_report = result["prune"]
    quality = result["quality"]
    totals = [{"method": prune_report["method"], "sparsity": prune_report["sparsity"],
               "allocation": prune_report["allocation"], "refine": prune_report["refine"] or "-",
               "total_sparsity": prune_report["total_sparsity"],
               "total_reconstruction_error": prune_report["total_reconstruction_error"],
               "seconds": prune_report["seconds"]}]
    sections = [("", f"Model `{result['model']}` ({result['model_class']}); calibration: "
                     f"{result['calibration'].get('kind', '')} from {result['calibration']['source']} "
                     f"(seed {result['calibration']['seed']}). Checkpoint: `{result['checkpoint']['path']}/` "
                     f"({result['checkpoint']['format']})."),
                ("Totals", reports.markdown_table(totals, [
                    ("method", "method", ""), ("sparsity", "sparsity", ""), ("allocation", "allocation", ""),
                    ("refine", "refine", ""), ("total_sparsity", "achieved sparsity", ".4f"),
                    ("total_reconstruction_error", "layer rel. error", ".4g"), ("seconds", "seconds", ".1f")]))]
    if result.get("timings"):
        sections.append(("Time", reports.markdown_table(
            [{"stage": stage, "seconds": seconds} for stage, seconds in result["timings"].items()],
            [("stage", "stage", ""), ("seconds", "seconds", ".2f")])))
    plots = {reports.LAYERS_PNG: lambda path: reports.plot_layers(
        path, {f"{prune_report['method']} {prune_report['sparsity']}": prune_report})}
    if quality is not None:
        metric = quality["metric"]
        sections.append(("Quality", reports.markdown_table([quality], [
            ("metric", "metric", ""), ("dense", "dense", ".4f"), ("pruned", "pruned", ".4f"),
            ("source", "evaluation text", "")])))
        n, _, m = str(prune_report["sparsity"]).partition(":")  # "2:4" keeps 2 of 4: target 0.5
        target = 1 - int(n) / int(m) if m else float(prune_report["sparsity"])
        rows = [{"method": prune_report["method"], "sparsity": prune_report["sparsity"], "target_sparsity": target,
                 metric: quality["pruned"]}]
        plots[reports.QUALITY_PNG] = lambda path: reports.plot_quality(
            path, rows, metric, "perplexity" if metric == "perplexity" else "mean cosine to dense embeddings",
            dense_value=quality["dense"], higher_is_better=metric != "perplexity",
            title=f"{result['model_class']}: quality against sparsity")
    layers = [dict(layer, shape="x".join(str(d) for d in layer["shape"])) for layer in prune_report["layers"]]
    sections.append(("Layers", reports.markdown_table(layers, [
        ("name", "layer", ""), ("shape", "shape", ""), ("target_sparsity", "target", ".4f"),
        ("sparsity", "sparsity", ".4f"), ("reconstruction_error", "rel. error", ".4g")])))
    written = [p.name for p in reports.draw_plots(out, plots)]
    reports.write_markdown(out / reports.REPORT_MD, f"prunekit prune: {result['model']}", sections,
                           [(name.removesuffix(".png").replace("_", " "), name) for name in written])
    files = ["model", reports.REPORT_JSON, reports.REPORT_MD] + written
    reports.write_json(out / reports.REPORT_JSON, {**result, "files": files})
    return files


def _print_prune_summary(result: dict, report, out: Path) -> None:
    print(report.summary())
    quality = result["quality"]
    if quality is not None:
        extra = f" (min cosine {quality['min_cosine']:.4f})" if "min_cosine" in quality else ""
        print(f"{quality['metric']}: dense {quality['dense']:.4f}, pruned {quality['pruned']:.4f}{extra}")
    print(f"wrote {', '.join(os.fspath(out / f) for f in result['files'])}")

