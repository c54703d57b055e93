"""``prunekit slice``: SliceGPT on a Hugging Face causal LM; parameters, dense forward time and
perplexity before and after; the sliced checkpoint (prunekit.load rebuilds it) and a report."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.hf import load_model, resolve_model
from prunekit.surgery.slicing import BASES
from prunekit.surgery.slicing.slicer import PCA_WEIGHTINGS

from .. import evaluation
from .. import report as reports
from ..benchmarks.common import machine_info
from .common import DTYPES, UsageError, add_calibration_arguments, add_perplexity_arguments, positive_int
from .data import calibration_batches, check_text_files, evaluation_batches

logger = logging.getLogger(__name__)

SLICE_FILES = ("model", reports.REPORT_JSON, reports.REPORT_MD)


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``slice`` command and its options to ``commands`` (the subparsers of ``prunekit``)."""
    parser = commands.add_parser(
        "slice", parents=[common], help="SliceGPT: slice a causal LM's hidden width; write the checkpoint and a report",
        description="Slice MODEL (a local Hugging Face Llama, Mistral, Qwen2, OPT or GPT-2 causal LM directory, or a "
                    "hub id when the hub is reachable) with SliceGPT: fold its norms, rotate every residual-stream "
                    "boundary into the principal basis of the calibration activations and delete the least principal "
                    "dimensions. Writes DIR/model (load it with prunekit.load), report.json and report.md.")
    parser.add_argument("model", metavar="MODEL", help="local model directory or hub id")
    parser.add_argument("--ratio", required=True,
                        help="fraction of the hidden width removed, in [0, 1) (e.g. 0.25), or one per block separated "
                             "by commas")
    parser.add_argument("--bases", default="sublayer", choices=BASES,
                        help="sublayer: a basis at every boundary, two shortcut rotations per block (the paper); "
                             "block: one basis per block, one shortcut (fewer parameters) (default sublayer)")
    parser.add_argument("--keep-embeddings", action="store_true",
                        help="leave the embeddings, final norm and LM head as they are (a tied head stays tied); the "
                             "first block reads and the last writes the full width (RMS-norm models)")
    parser.add_argument("--pca", default="energy", choices=PCA_WEIGHTINGS,
                        help="energy: the covariance sums x x^T (the paper); normalized: of x / |x|, every token "
                             "weighs the same (default energy)")
    parser.add_argument("--round-to", type=positive_int, default=8,
                        help="kept widths are multiples of this (default 8)")
    add_calibration_arguments(parser, 128)
    add_perplexity_arguments(parser)
    parser.add_argument("--time-runs", type=int, default=5,
                        help="batch-1 forwards of --seqlen tokens timed before and after (default 5; 0: none)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load and slice in (default "
                                                                              "float32)")
    parser.add_argument("--device", default=None, help="device the blocks run on (default: where the model is)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace prunekit's files in an existing DIR")
    parser.set_defaults(run=run)


def parse_ratio(text: str) -> float | list[float]:
    """"0.25" -> 0.25; "0.25,0.3" -> [0.25, 0.3]; the range is checked by prunekit.slice_."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise UsageError(f"--ratio: expected a fraction in [0, 1) or fractions separated by commas, but got "
                         f"{text!r}") from None
    for value in values:
        if not 0 <= value < 1:
            raise UsageError(f"--ratio: expected fractions in [0, 1), but got {text!r}")
    return values[0] if len(values) == 1 else values


def forward_ms(model, seqlen: int, runs: int, vocab: int) -> float | None:
    """Median milliseconds of a batch-1 forward of ``seqlen`` tokens (plain dense kernels)."""
    if runs <= 0:
        return None
    ids = torch.randint(0, vocab, (1, seqlen), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    ids = ids.to(device)
    times = []
    with torch.no_grad():
        for _ in range(2):  # warm-up
            model(input_ids=ids)
        for _ in range(runs):
            started = time.perf_counter()
            model(input_ids=ids)
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    ratio = parse_ratio(args.ratio)
    resolve_model(args.model)
    check_text_files(args)
    if args.time_runs < 0:
        raise UsageError(f"--time-runs: expected a count >= 0, but got {args.time_runs}")
    started = time.perf_counter()
    model, tokenizer, causal = load_model(args.model, args.dtype)
    if not causal:
        raise UsageError(f"MODEL: SliceGPT needs a causal LM, but {args.model!r} loads as {type(model).__name__}")
    created = not Path(args.out).exists()
    out = reports.prepare_output_dir(args.out, args.overwrite, SLICE_FILES)
    try:
        return _slice_run(args, ratio, model, tokenizer, causal, out, started)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing half-written: the directory this run made goes again
        raise


def _slice_run(args, ratio, model, tokenizer, causal: bool, out: Path, started: float) -> int:
    calib, calib_info = calibration_batches(args, model, tokenizer, causal)
    vocab = int(model.config.vocab_size)
    quality, eval_batches = None, None
    if not args.no_eval:
        eval_batches, source = evaluation_batches(args.eval_data, model, tokenizer, causal, args.eval_samples,
                                                  args.seqlen, args.seed, args.batch_size)
        with torch.no_grad():
            quality = {"metric": "perplexity", "source": source,
                       "dense": evaluation.perplexity(model, eval_batches, not args.quiet)}
    timing = {"what": f"median ms of a batch-1 forward of {args.seqlen} tokens ({args.time_runs} runs, "
                      f"{torch.get_num_threads()} threads; indicative: measured on a machine others may share)",
              "dense_ms": forward_ms(model, args.seqlen, args.time_runs, vocab)}
    logger.info("slicing %s at ratio %s (%s bases)", args.model, ratio, args.bases)
    report = prunekit.slice_(model, ratio, calib, bases=args.bases, round_to=args.round_to,
                             keep_embeddings=args.keep_embeddings, pca=args.pca, device=args.device,
                             progress=not args.quiet)
    if quality is not None:
        with torch.no_grad():
            quality["sliced"] = evaluation.perplexity(model, eval_batches, not args.quiet)
    timing["sliced_ms"] = forward_ms(model, args.seqlen, args.time_runs, vocab)
    if timing["dense_ms"] and timing["sliced_ms"]:
        timing["speedup"] = timing["dense_ms"] / timing["sliced_ms"]
    partial = Path(tempfile.mkdtemp(prefix=".model.partial-", dir=out))
    try:  # written beside, renamed when complete
        prunekit.save(model, partial, overwrite=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(os.fspath(partial))
        partial.rename(out / "model")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    result = {"command": "slice", "model": args.model, "model_class": type(model).__name__,
              "config": {"ratio": ratio, "bases": args.bases, "round_to": args.round_to,
                         "keep_embeddings": args.keep_embeddings, "pca": args.pca, "dtype": args.dtype},
              "calibration": calib_info, "quality": quality, "forward_time": timing,
              "checkpoint": {"path": "model", "format": "prunekit checkpoint of a sliced model (prunekit.load)"},
              "slice": report.to_dict(), "machine": machine_info(), "seconds": time.perf_counter() - started}
    _write_report(out, result)
    _print_summary(result, out)
    return 0


def _write_report(out: Path, result: dict) -> None:
    sliced = result["slice"]
    rows = [{"what": "decoder blocks", "before": sliced["block_params_before"], "after": sliced["block_params_after"]},
            {"what": "whole model", "before": sliced["params_before"], "after": sliced["params_after"]}]
    for row in rows:
        row["reduction"] = 1 - row["after"] / row["before"]
    sections = [("", f"Model `{result['model']}` ({result['model_class']}) sliced with SliceGPT: ratio "
                     f"{result['config']['ratio']}, {sliced['bases']} bases, {sliced['shortcuts']} shortcut rotations, "
                     f"kept widths: embedding {sliced['dims']['embedding']}, head {sliced['dims']['head']} of "
                     f"{sliced['hidden_size']}" + ("; the tied LM head was untied" if sliced["head_untied"] else "")
                     + f". Checkpoint: `model/` ({result['checkpoint']['format']})."),
                ("Parameters", reports.markdown_table(rows, [("what", "", ""), ("before", "before", ","),
                                                             ("after", "after", ","),
                                                             ("reduction", "reduction", ".1%")]))]
    timing = result["forward_time"]
    if timing.get("dense_ms") is not None:
        sections.append(("Forward time", reports.markdown_table([timing], [
            ("dense_ms", "dense ms", ".2f"), ("sliced_ms", "sliced ms", ".2f"), ("speedup", "speedup", ".3f"),
            ("what", "measured", "")])))
    if result["quality"] is not None:
        sections.append(("Quality", reports.markdown_table([result["quality"]], [
            ("metric", "metric", ""), ("dense", "dense", ".4f"), ("sliced", "sliced", ".4f"),
            ("source", "evaluation text", "")])))
    reports.write_markdown(out / reports.REPORT_MD, f"prunekit slice: {result['model']}", sections, [])
    reports.write_json(out / reports.REPORT_JSON, {**result, "files": list(SLICE_FILES)})


def _print_summary(result: dict, out: Path) -> None:
    sliced = result["slice"]
    print(f"sliced {result['model_class']}: block parameters {sliced['block_params_before']:,} -> "
          f"{sliced['block_params_after']:,} ({sliced['block_params_reduction']:.1%} fewer)")
    if result["quality"] is not None:
        print(f"perplexity: dense {result['quality']['dense']:.4f}, sliced {result['quality']['sliced']:.4f}")
    timing = result["forward_time"]
    if timing.get("speedup"):
        print(f"batch-1 forward: dense {timing['dense_ms']:.2f} ms, sliced {timing['sliced_ms']:.2f} ms")
    print(f"wrote {', '.join(os.fspath(out / name) for name in SLICE_FILES)}")
