"""``prunekit prune-layers``: remove whole blocks (ShortGPT) or attention / MLP sublayers
(FinerCut) of a Hugging Face model, measure it before and after, and write the result and a report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import prunekit
from prunekit import distributed
from prunekit.hf import load_model, resolve_model
from prunekit.recovery import save_trained
from prunekit.surgery.layers import BUDGETS, UNITS

from .. import report as reports
from ..benchmarks.common import machine_info
from .common import (DTYPES, UsageError, add_calibration_arguments, add_perplexity_arguments, positive_int,
                     prepare_output)
from .data import calibration_batches, check_text_files, evaluation_batches

logger = logging.getLogger(__name__)

FILES = ("model", "report.json", "report.md")


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``prune-layers`` command and its options to ``commands``."""
    parser = commands.add_parser(
        "prune-layers", parents=[common], help="remove whole blocks or attention/MLP sublayers of a model",
        description="Score the blocks of MODEL by 1 - cos(block input, block output) (ShortGPT), or its attention "
                    "and MLP sublayers by the change of the block output without them (FinerCut), remove the least "
                    "important ones and write DIR/model, report.json and report.md. Removing blocks writes a "
                    "Hugging Face folder (from_pretrained reloads it); removing sublayers a prunekit checkpoint "
                    "(prunekit.load). Calibration text defaults to standard-library docstrings.")
    parser.add_argument("model", metavar="MODEL", help="local model directory, hub id, or a packaged name (smollm2)")
    parser.add_argument("--ratio", type=float, help="fraction of the units to remove, in [0, 1)")
    parser.add_argument("--indices", metavar="LIST",
                        help="comma-separated units to remove instead of --ratio: block indices (e.g. 3,7), or "
                             "BLOCK.attention / BLOCK.mlp with --unit sublayer")
    parser.add_argument("--unit", default="block", choices=UNITS, help="what is removed (default block)")
    parser.add_argument("--budget", default="units", choices=BUDGETS,
                        help="--ratio counts units, or the blocks' parameters (default units)")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="remove in this many steps, re-scoring in between (default 1)")
    add_calibration_arguments(parser, 64)
    add_perplexity_arguments(parser)
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load in (default float32)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace prunekit's files in an existing DIR")
    parser.set_defaults(run=run)


def parse_indices(text: str, unit: str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UsageError(f"--indices: expected a comma-separated list, but got {text!r}")
    if unit == "sublayer":
        return items
    try:
        return [int(item) for item in items]
    except ValueError:
        raise UsageError(f"--indices: expected block indices (integers) with --unit block, but got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    if (args.ratio is None) == (args.indices is None):
        raise UsageError("expected exactly one of --ratio and --indices")
    if args.ratio is not None and not 0 <= args.ratio < 1:
        raise UsageError(f"--ratio: expected a fraction in [0, 1), but got {args.ratio}")
    indices = parse_indices(args.indices, args.unit) if args.indices is not None else None
    resolve_model(args.model)
    check_text_files(args)
    started = time.perf_counter()
    torchrun = distributed.init_from_env()
    try:
        out = prepare_output(args, FILES, torchrun)
        model, tokenizer, causal = load_model(args.model, args.dtype)
        if not causal:
            raise UsageError(f"MODEL: prune-layers needs a causal LM, but {args.model!r} is a "
                             f"{type(model).__name__}")
        calib, calib_info = calibration_batches(args, model, tokenizer, causal)
        eval_batches, eval_source = (None, None) if args.no_eval else evaluation_batches(
            args.eval_data, model, tokenizer, causal, args.eval_samples, args.seqlen, args.seed, args.batch_size)
        report = prunekit.prune_layers(model, args.ratio, calib if indices is None else None, args.unit,
                                       indices=indices, budget=args.budget, rounds=args.rounds,
                                       eval_batches=eval_batches, time_batch=calib[0], progress=not args.quiet)
        checkpoint_format = save_trained(model, out / "model", tokenizer=tokenizer)
        if not torchrun or distributed.is_main_process():
            result = {"command": "prune-layers", "model": args.model, "model_class": type(model).__name__,
                      "calibration": calib_info, "evaluation": eval_source,
                      "checkpoint": {"path": "model", "format": "Hugging Face (from_pretrained)"
                                     if checkpoint_format == "hf" else "prunekit (prunekit.load)"},
                      "prune_layers": report.to_dict(), "machine": machine_info(),
                      "seconds": time.perf_counter() - started}
            write_report(out, result, f"prunekit prune-layers: {args.model}", layer_report_sections(result))
            print(report.summary())
            print(f"wrote {', '.join(os.fspath(out / f) for f in FILES)}")
    finally:
        if torchrun:
            distributed.shutdown()
    return 0


def layer_report_sections(result: dict) -> list[tuple[str, str]]:
    report = result["prune_layers"]
    row = {key: report[key] for key in ("unit", "ratio", "budget", "rounds", "blocks_before", "blocks_after",
                                        "parameters_before", "parameters_after", "forward_seconds_before",
                                        "forward_seconds_after", "perplexity_before", "perplexity_after")}
    row["removed"] = ", ".join(map(str, report["removed"])) or "-"
    sections = [("", f"Model `{result['model']}` ({result['model_class']}); checkpoint `model/` "
                     f"({result['checkpoint']['format']}); perplexity on {result['evaluation'] or '-'}."),
                ("Result", reports.markdown_table([row], [
                    ("unit", "unit", ""), ("removed", "removed", ""), ("blocks_before", "blocks before", ""),
                    ("blocks_after", "after", ""), ("parameters_before", "parameters before", ","),
                    ("parameters_after", "after", ","), ("forward_seconds_before", "forward s before", ".4f"),
                    ("forward_seconds_after", "after", ".4f"), ("perplexity_before", "perplexity before", ".2f"),
                    ("perplexity_after", "after", ".2f")]))]
    if report["scores"]:
        rows = report["scores"][0]
        columns = [("index", "block", ""), ("block", "block score", ".5f")]
        if "attention" in rows[0]:
            columns += [("attention", "attention score", ".5f"), ("mlp", "MLP score", ".5f")]
        sections.append(("Scores (first round; 1 - cos of the block output with and without the unit)",
                         reports.markdown_table(rows, columns)))
    return sections


def write_report(out: Path, result: dict, title: str, sections) -> None:
    """report.json and report.md, each written to a temporary name and renamed."""
    for name, write in ((reports.REPORT_JSON, lambda p: p.write_text(json.dumps(reports.jsonable(result), indent=2)
                                                                     + "\n")),
                        (reports.REPORT_MD, lambda p: reports.write_markdown(p, title, sections))):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        write(tmp)
        os.replace(tmp, out / name)
