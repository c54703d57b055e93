"""``prunekit recover``: a short training of a pruned model on a text file, or on sequences its
dense teacher samples, that keeps every pruned weight exactly zero (alone or data-parallel under
torchrun), with the perplexity before and after, the trained checkpoint and a report."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from prunekit import distributed
from prunekit.hf import load_model, resolve_model
from prunekit.reconstruction import reconstruct
from prunekit.recovery import SAMPLING_TOP_K, SAMPLING_TOP_P, TRAIN_MODES, recover, teacher_samples, text_batches
from prunekit.solvers.block_refine import MAX_STEPS

from .. import evaluation
from .. import report as reports
from ..benchmarks.common import machine_info
from .common import DTYPES, UsageError, add_perplexity_arguments, non_negative_int, positive_int, prepare_output
from .data import check_text_files, evaluation_batches
from .prune_layers import write_report

logger = logging.getLogger(__name__)

FILES = ("model", "report.json", "report.md")
TEACHER_TOP_K = 64
RECONSTRUCT_STEPS = 72


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, but got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, but got {text!r}")
    return value


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``recover`` command and its options to ``commands``."""
    parser = commands.add_parser(
        "recover", parents=[common], help="train a pruned model briefly, keeping its pruned weights at zero",
        description="Train MODEL (a pruned Hugging Face folder or prunekit checkpoint) for --steps steps on the text "
                    "of --data (or on --teacher-samples sequences that the --teacher samples), keeping every weight "
                    "that is zero now at exactly zero, and write DIR/model, "
                    "report.json and report.md. --train all: every remaining weight (masked AdamW); norms: norm "
                    "weights and biases only; lora: low-rank adapters constrained to the sparsity pattern, merged "
                    "afterwards. Launch under torchrun for data parallelism: torchrun --nproc-per-node 2 -m prunekit "
                    "recover ...")
    parser.add_argument("model", metavar="MODEL", help="local model directory, hub id, or a packaged name (smollm2)")
    parser.add_argument("--data", type=Path, metavar="FILE",
                        help="training text (UTF-8); this or --teacher-samples")
    parser.add_argument("--steps", required=True, type=positive_int, help="optimiser steps")
    parser.add_argument("--train", default="all", choices=TRAIN_MODES, help="what trains (default all)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="peak learning rate (default 1e-4 for all, 1e-3 for norms and lora)")
    parser.add_argument("--seqlen", type=positive_int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="sequences per step (default 4)")
    parser.add_argument("--accumulation", type=positive_int, default=1, help="batches per step (default 1)")
    parser.add_argument("--lora-rank", type=positive_int, default=16, help="adapter rank (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window order and adapters (default 0)")
    parser.add_argument("--teacher", metavar="DENSE", default=None,
                        help="the model before pruning (directory, hub id or packaged name): distil from it (the "
                             "loss becomes the KL from its next-token distribution; recovers more on text unlike "
                             "--data)")
    parser.add_argument("--teacher-samples", type=positive_int, default=None, metavar="N",
                        help="train on N sequences of --seqlen tokens that --teacher samples from its BOS token "
                             f"(top-k {SAMPLING_TOP_K}, top-p {SAMPLING_TOP_P}; seeded by --seed) instead of --data: "
                             "distillation that needs no text and carries over to text of other domains")
    parser.add_argument("--teacher-top-k", type=non_negative_int, default=None, metavar="K",
                        help="with --teacher-samples: keep the teacher's K most likely next tokens at every position "
                             "while it samples, and distil from them (the KL over those K and all others as one) "
                             "without running the teacher during training; 0: its whole distribution, one teacher "
                             f"forward per step (default {TEACHER_TOP_K})")
    parser.add_argument("--reconstruct", type=positive_int, default=None, metavar="N",
                        help="with --teacher: before training, refit the kept weights to the teacher block by block "
                             "on the first N training sequences (least squares, then block refinement; "
                             "prunekit.reconstruct): a cheap first stage that leaves fewer steps to train")
    parser.add_argument("--reconstruct-steps", type=non_negative_int, default=None, metavar="S",
                        help=f"with --reconstruct: block-refinement steps per block (default {RECONSTRUCT_STEPS}; "
                             "0: least squares only)")
    parser.add_argument("--autocast", choices=("bfloat16",), default=None,
                        help="run the forwards (training, and sampling) under torch.autocast in this dtype: about "
                             "half the time on CPUs with bf16 arithmetic (AVX512-BF16, AMX); weights stay --dtype")
    parser.add_argument("--hidden-distillation", type=float, default=0.0, metavar="WEIGHT",
                        help="with --teacher: add WEIGHT times the blocks' hidden-state errors to the teacher's "
                             "(SquareHead; default 0: the logits only)")
    add_perplexity_arguments(parser)
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load and train in")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace prunekit's files in an existing DIR")
    parser.set_defaults(run=run)


def default_lr(train: str) -> float:
    return 1e-4 if train == "all" else 1e-3


def run(args: argparse.Namespace) -> int:
    if args.hidden_distillation and args.teacher is None:
        raise UsageError("--hidden-distillation: needs --teacher (the dense model whose hidden states the blocks "
                         "learn)")
    if (args.data is None) == (args.teacher_samples is None):
        raise UsageError("--data, --teacher-samples: expected one of them (the training text, or the number of "
                         f"sequences the teacher samples), but got {'both' if args.data is not None else 'neither'}")
    if args.teacher_samples is not None and args.teacher is None:
        raise UsageError("--teacher-samples: needs --teacher (the dense model that samples the sequences)")
    if args.teacher_top_k is not None and args.teacher_samples is None:
        raise UsageError(f"--teacher-top-k: expected with --teacher-samples (the targets are kept while the teacher "
                         f"samples), but got --teacher-top-k {args.teacher_top_k} without it")
    target_top_k = 0 if args.teacher_samples is None else \
        TEACHER_TOP_K if args.teacher_top_k is None else args.teacher_top_k
    if args.hidden_distillation and target_top_k:
        raise UsageError(f"--hidden-distillation: needs the teacher to run at every step, but --teacher-top-k "
                         f"{target_top_k} distils from the top-k targets kept while sampling; pass --teacher-top-k 0")
    if args.reconstruct is not None and args.teacher is None:
        raise UsageError(f"--reconstruct: needs --teacher (the dense model the kept weights are refitted to), but got "
                         f"--reconstruct {args.reconstruct} without it")
    if args.reconstruct_steps is not None and args.reconstruct_steps > MAX_STEPS:
        raise UsageError(f"--reconstruct-steps: expected at most {MAX_STEPS}, but got {args.reconstruct_steps}")
    if args.reconstruct_steps is not None and args.reconstruct is None:
        raise UsageError(f"--reconstruct-steps: expected with --reconstruct, but got --reconstruct-steps "
                         f"{args.reconstruct_steps} without it")
    if args.reconstruct is not None and args.teacher_samples is not None and args.reconstruct > args.teacher_samples:
        raise UsageError(f"--reconstruct: expected at most --teacher-samples ({args.teacher_samples}) sequences, but "
                         f"got {args.reconstruct}")
    if args.seqlen < 2:
        raise UsageError(f"--seqlen: expected at least 2 tokens (one to predict), but got {args.seqlen}")
    paragraphs = evaluation.read_text_file(args.data, "--data") if args.data is not None else None
    check_text_files(args)
    source = resolve_model(args.model)
    if os.path.abspath(args.out) == os.path.abspath(source):
        raise UsageError(f"--out: {args.out!r} is MODEL's own directory; the input model is never overwritten")
    started = time.perf_counter()
    lr = args.lr if args.lr is not None else default_lr(args.train)
    torchrun = distributed.init_from_env()
    try:
        if torchrun and args.reconstruct is not None:
            raise UsageError("--reconstruct: runs in one process; drop it under torchrun (or reconstruct first "
                             "with one process)")
        out = prepare_output(args, FILES, torchrun)
        model, tokenizer, causal = load_model(args.model, args.dtype)
        if not causal or tokenizer is None:
            raise UsageError(f"MODEL: recover trains a causal LM with a tokenizer, but {args.model!r} is a "
                             f"{type(model).__name__}{'' if tokenizer is not None else ' without a tokenizer'}")
        teacher = None
        if args.teacher is not None:
            teacher, teacher_tokenizer, teacher_causal = load_model(args.teacher, args.dtype)
            if not teacher_causal:
                raise UsageError(f"--teacher: expected a causal LM (the model before pruning), but {args.teacher!r} "
                                 f"is a {type(teacher).__name__}")
            if teacher_tokenizer is not None and teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise UsageError(f"--teacher: {args.teacher!r} has another vocabulary than MODEL "
                                 f"({len(teacher_tokenizer)} and {len(tokenizer)} tokens); expected the model before "
                                 "pruning")
        sampling_seconds = None
        if paragraphs is not None:
            batches = text_batches(tokenizer, paragraphs, args.seqlen, args.batch_size, args.seed, what="--data")
        else:
            sampling_started = time.perf_counter()
            batches = teacher_samples(teacher, tokenizer, sequences=args.teacher_samples, seqlen=args.seqlen,
                                      batch_size=args.batch_size, autocast=args.autocast, seed=args.seed,
                                      target_top_k=target_top_k, progress=not args.quiet)
            sampling_seconds = time.perf_counter() - sampling_started
        eval_batches, eval_source = (None, None) if args.no_eval else evaluation_batches(
            args.eval_data, model, tokenizer, causal, args.eval_samples, args.seqlen, args.seed, 8)
        reconstructed = None
        if args.reconstruct is not None:
            calib = _first_sequences(batches, args.reconstruct)
            reconstructed = reconstruct(
                model, teacher, calib, autocast=args.autocast, eval_batches=eval_batches, progress=not args.quiet,
                refine_steps=RECONSTRUCT_STEPS if args.reconstruct_steps is None else args.reconstruct_steps)
            print(reconstructed.summary())
        if target_top_k:  # the batches hold its targets: it does not run again
            teacher = None
        report = recover(model, batches, steps=args.steps, lr=lr, train=args.train, accumulation=args.accumulation,
                         lora_rank=args.lora_rank, teacher=teacher, hidden_distillation=args.hidden_distillation,
                         autocast=args.autocast, eval_batches=eval_batches, seed=args.seed,
                         progress=not args.quiet, checkpoint=out / "model", tokenizer=tokenizer)
        if not torchrun or distributed.is_main_process():
            result = {"command": "recover", "model": args.model, "model_class": type(model).__name__,
                      "data": os.fspath(args.data) if args.data is not None else
                      f"{args.teacher_samples} sequences sampled by the teacher",
                      "teacher": args.teacher, "sampling_seconds": sampling_seconds, "evaluation": eval_source,
                      "reconstruct": None if reconstructed is None else reconstructed.to_dict(),
                      "recover": report.to_dict(),
                      "machine": machine_info(), "seconds": time.perf_counter() - started}
            write_report(out, result, f"prunekit recover: {args.model}", _sections(result))
            print(report.summary())
            print(f"wrote {', '.join(os.fspath(out / f) for f in FILES)}")
    finally:
        if torchrun:
            distributed.shutdown()
    return 0


def _first_sequences(batches: list, sequences: int) -> list:
    """The first ``sequences`` sequences of ``batches`` (whole batches, the last one cut)."""
    taken, count = [], 0
    for batch in batches:
        if count >= sequences:
            break
        rows = min(int(batch["input_ids"].shape[0]), sequences - count)
        taken.append({key: value[:rows] for key, value in batch.items()})
        count += rows
    if count < sequences:
        raise UsageError(f"--reconstruct: expected at most the {count} training sequences, but got {sequences}")
    return taken


def _sections(result: dict) -> list[tuple[str, str]]:
    report = result["recover"]
    columns = [("train", "train", ""), ("steps", "steps", ""), ("lr", "lr", "g"),
               ("trainable_parameters", "trainable", ","), ("masked_weights", "pruned weights kept at 0", ","),
               ("pruned_weights_still_zero", "all still 0", ""), ("loss_first", "loss first", ".4f"),
               ("loss_last", "loss last", ".4f"), ("perplexity_before", "perplexity before", ".2f"),
               ("perplexity_after", "after", ".2f"), ("forward_seconds_before", "forward s before", ".4f"),
               ("forward_seconds_after", "after", ".4f"), ("seconds", "seconds", ".1f")]
    sampled = f" (sampled in {result['sampling_seconds']:.1f} s)" if result.get("sampling_seconds") is not None else ""
    forwards = f"; forwards in {report['autocast']}" if report.get("autocast") else ""
    sections = [("", f"Model `{result['model']}` ({result['model_class']}) trained on `{result['data']}`{sampled}; "
                     f"loss: {report['loss']}{forwards}; perplexity on {result['evaluation'] or '-'}; checkpoint "
                     "`model/`.")]
    if result.get("reconstruct") is not None:
        stage = result["reconstruct"]
        refit = [("layers", "layers refitted", ""), ("calibration_items", "batches", ""),
                 ("refine_steps", "block-refinement steps", ""), ("pruned_weights_still_zero", "all still 0", ""),
                 ("perplexity_before", "perplexity before", ".2f"), ("perplexity_after", "after", ".2f"),
                 ("seconds", "seconds", ".1f")]
        sections.append(("Reconstruction (before training)", reports.markdown_table([stage], refit)))
    return sections + [("Result", reports.markdown_table([report], columns))]
