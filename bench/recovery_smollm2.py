"""Quality of layer pruning and recovery training on SmolLM2-135M under the preamble's protocol
(perplexity on 64 x 128-token windows of the held-out novel; calibration on standard-library
docstrings), written as JSON lines to bench/results/recovery_smollm2.jsonl (one line per run) for
bench/results/recovery_smollm2.md.

Training text: prose docstrings of standard-library modules outside the evaluation set (the
calibration modules and the others in TRAIN_MODULES), never the novel.

    python bench/recovery_smollm2.py wanda --train all --steps 60 --lr 2e-4
    python bench/recovery_smollm2.py wanda --train all --steps 40 --lr 3e-4 --teacher   # distilled
    python bench/recovery_smollm2.py wanda --steps 150 --lr 3e-4 --teacher --teacher-samples 256 --autocast bfloat16
    python bench/recovery_smollm2.py wanda --steps 220 --lr 3e-4 --teacher --teacher-samples 384 --teacher-top-k 64 \
        --autocast bfloat16 --skip-before
    python bench/recovery_smollm2.py wanda --steps 80 --lr 3e-4 --teacher --teacher-samples 256 --teacher-top-k 64 \
        --reconstruct 64 --autocast bfloat16 --skip-before   # reconstruct, then distil
    python bench/recovery_smollm2.py layers --unit block --ratio 0.25 --steps 60
    python bench/recovery_smollm2.py slice --ratio 0.25 --steps 40 --lr 3e-4 --teacher
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import prunekit
from prunekit.app.benchmarks.common import machine_info
from prunekit.app.evaluation import (CALIBRATION_MODULES, EVALUATION_MODULES, docstring_paragraphs,
                                     lm_quality_batches, perplexity)
from prunekit.hf import load_model
from prunekit.recovery import teacher_samples, text_batches, zero_masks

RESULTS = Path(__file__).resolve().parent / "results" / "recovery_smollm2.jsonl"
TRAIN_MODULES = CALIBRATION_MODULES + (
    "configparser", "contextlib", "enum", "pickle", "tempfile", "difflib", "glob", "xml.etree.ElementTree",
    "sched", "queue", "weakref", "copy", "pprint", "calendar", "locale", "gettext", "codecs", "hashlib", "base64",
    "html.parser", "mailbox", "smtplib", "imaplib", "optparse", "shlex", "cmd", "pdb", "timeit", "trace", "ast",
    "tokenize", "pkgutil", "runpy", "sqlite3", "socket", "ssl", "selectors", "socketserver", "http.server",
    "xmlrpc.client", "plistlib", "sysconfig", "platform", "traceback", "warnings", "abc", "numbers", "operator",
    "bisect", "array", "math", "cmath", "ipaddress", "uuid", "secrets", "hmac", "gzip", "bz2", "lzma", "zlib",
    "filecmp", "fnmatch", "linecache", "stat", "tomllib", "wave", "colorsys", "imaplib", "nntplib", "ftplib")


def training_paragraphs() -> list[str]:
    assert not set(TRAIN_MODULES) & set(EVALUATION_MODULES)
    modules = []
    for name in dict.fromkeys(TRAIN_MODULES):
        try:
            __import__(name)
            modules.append(name)
        except ImportError:
            pass
    return docstring_paragraphs(modules)


def record(row: dict) -> None:
    row.update(machine=machine_info(), commit=os.popen("git rev-parse --short HEAD").read().strip(),
               threads=torch.get_num_threads())
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as file:
        file.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "machine"}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("wanda", "layers", "slice"))
    parser.add_argument("--train", default="all", choices=("all", "norms", "lora"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--unit", default="block", choices=("block", "sublayer"))
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--budget", default="units", choices=("units", "parameters"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--indices", help="comma-separated units to remove instead of scoring by --ratio")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", action="store_true",
                        help="distil from the dense SmolLM2 (the loss: KL from its next-token distribution)")
    parser.add_argument("--teacher-samples", type=int, default=None, metavar="N",
                        help="with --teacher: train on N sequences the dense SmolLM2 samples (not the docstrings)")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of --teacher-samples (default 0)")
    parser.add_argument("--top-k", type=int, default=50, help="--teacher-samples: top-k (0: all; default 50)")
    parser.add_argument("--top-p", type=float, default=0.95, help="--teacher-samples: nucleus (default 0.95)")
    parser.add_argument("--teacher-top-k", type=int, default=0,
                        help="--teacher-samples: keep the teacher's top-k targets while sampling and distil from "
                             "them without a teacher forward per step (default 0: the full distribution)")
    parser.add_argument("--autocast", choices=("bfloat16",), default=None,
                        help="the forwards (sampling and training) under torch.autocast")
    parser.add_argument("--reconstruct", type=int, default=None, metavar="N",
                        help="with --teacher: prunekit.reconstruct on the first N training sequences before training "
                             "(a multiple of --batch-size)")
    parser.add_argument("--reconstruct-steps", type=int, default=72,
                        help="--reconstruct: block-refinement steps per block (default 72)")
    parser.add_argument("--hidden-distillation", type=float, default=0.0,
                        help="with --teacher: weight of the blocks' hidden-state errors (SquareHead)")
    parser.add_argument("--skip-before", action="store_true", help="no perplexity before recovery (time)")
    parser.add_argument("--dense", action="store_true", help="measure the dense perplexity too (32.87)")
    parser.add_argument("--cache", default="/tmp/prunekit-recovery-wanda50.pt",
                        help="the Wanda 50%% state dict, reused between runs")
    args = parser.parse_args()
    if args.teacher_samples is not None and args.teacher_samples < 1:
        parser.error(f"--teacher-samples: expected a positive number of sequences, but got {args.teacher_samples}")
    if args.teacher_samples and not args.teacher:
        parser.error("--teacher-samples needs --teacher (the dense model samples them)")
    if args.reconstruct is not None and (not args.teacher or args.reconstruct < 1
                                         or args.reconstruct % args.batch_size):
        parser.error(f"--reconstruct: expected a positive multiple of --batch-size ({args.batch_size}) with "
                     f"--teacher, but got {args.reconstruct}")
    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model("smollm2")
    calib, heldout = lm_quality_batches(tokenizer)
    row = {"part": args.part}
    if args.part == "wanda":
        if os.path.isfile(args.cache):
            model.load_state_dict(torch.load(args.cache))
        else:
            started = time.perf_counter()
            prunekit.prune(model, prunekit.PruneConfig(method="wanda", sparsity=0.5), calib)
            row["prune_seconds"] = time.perf_counter() - started
            torch.save(model.state_dict(), args.cache)
        row["method"] = "wanda 0.5"
    elif args.part == "slice":
        report = prunekit.slice_(model, args.ratio, calib, progress=False)
        row.update(method=f"slice_ {args.ratio} (sublayer bases)", slice_report=report.to_dict())
    else:
        if args.dense:
            row["dense_perplexity"] = perplexity(model, heldout)
        if args.indices:  # the units a ratio run chose, without scoring again
            indices = [int(i) if i.isdigit() else i for i in args.indices.split(",")]
            report = prunekit.prune_layers(model, indices=indices, unit=args.unit, progress=False)
        else:
            report = prunekit.prune_layers(model, args.ratio, calib, args.unit, budget=args.budget,
                                           rounds=args.rounds, progress=False)
        row.update(method=f"prune_layers {args.unit} {args.ratio} ({args.budget}, {args.rounds} rounds)",
                   layer_report=report.to_dict())
    masks = zero_masks(model)
    if args.steps == 0:
        row["pruned_perplexity"] = perplexity(model, heldout)
    else:
        teacher = load_model("smollm2")[0].eval() if args.teacher else None
        if args.teacher_samples:
            started = time.perf_counter()
            batches = teacher_samples(teacher, tokenizer, sequences=args.teacher_samples, seqlen=128,
                                      batch_size=args.batch_size, autocast=args.autocast, seed=args.sample_seed,
                                      top_k=args.top_k, top_p=args.top_p, target_top_k=args.teacher_top_k,
                                      progress=False)
            row["sampling_seconds"] = time.perf_counter() - started
        else:
            batches = text_batches(tokenizer, training_paragraphs(), seqlen=128, batch_size=args.batch_size, seed=0)
        if args.reconstruct is not None:
            reconstruction = prunekit.reconstruct(model, teacher, batches[: args.reconstruct // args.batch_size],
                                                  refine_steps=args.reconstruct_steps, autocast=args.autocast,
                                                  progress=False)
            row.update(reconstruct=reconstruction.to_dict())
            if not args.skip_before:
                row["reconstructed_perplexity"] = perplexity(model, heldout)
        cached = bool(args.teacher_samples and args.teacher_top_k)  # the batches hold the teacher's targets
        report = prunekit.recover(model, batches, steps=args.steps, lr=args.lr, train=args.train,
                                  teacher=None if cached else teacher,
                                  hidden_distillation=args.hidden_distillation, autocast=args.autocast,
                                  eval_batches=None if args.skip_before else heldout, time_batch=calib[0],
                                  progress=False)
        if args.skip_before:
            report.perplexity_after = perplexity(model, heldout)
        # Sampling, reconstruction and training: what a user waits for (the evaluations excluded).
        row["recovery_seconds"] = (row.get("sampling_seconds", 0.0) + row.get("reconstruct", {}).get("seconds", 0.0)
                                   + report.seconds - (report.forward_seconds_before or 0)
                                   - (report.forward_seconds_after or 0))
        params = dict(model.named_parameters())
        still_zero = all(bool((params[n].detach()[~m] == 0).all()) for n, m in masks.items())
        row.update(train=args.train, steps=args.steps, lr=args.lr, batch_size=args.batch_size, teacher=args.teacher,
                   teacher_samples=args.teacher_samples, sample_seed=args.sample_seed, top_k=args.top_k,
                   top_p=args.top_p, teacher_top_k=args.teacher_top_k if args.teacher_samples else None,
                   autocast=args.autocast,
                   hidden_distillation=args.hidden_distillation,
                   training_windows=sum(len(b["input_ids"]) for b in batches), recover=report.to_dict(),
                   pruned_perplexity=report.perplexity_before, recovered_perplexity=report.perplexity_after,
                   still_zero=still_zero,
                   pruned_weights=int(sum(int((~m).sum()) for m in masks.values())))
    record(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
