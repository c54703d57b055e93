"""The text a command calibrates and evaluates on: a file of the user's (--calib, --data), the
docstrings of the Python standard library (offline, deterministic), or sequences a causal LM samples
itself (--calib-samples), tokenized for the model; seeded random token ids for a model without a
tokenizer."""

from __future__ import annotations

import logging
import os

from ...recovery import SAMPLING_TOP_K, SAMPLING_TOP_P, teacher_samples
from .. import evaluation
from .common import UsageError

logger = logging.getLogger(__name__)


def check_text_files(args) -> None:
    """Reads --calib and --eval-data (unless --no-eval) once before anything is loaded or written,
    so that a missing, unreadable or empty file is the first error."""
    if getattr(args, "calib_samples", False) and getattr(args, "calib", None) is not None:
        raise UsageError("--calib, --calib-samples: expected one calibration source (a text file, or the model's own "
                         "samples), but got both")
    if getattr(args, "calib", None) is not None:
        evaluation.read_text_file(args.calib, "--calib")
    if args.eval_data is not None and not args.no_eval:
        evaluation.read_text_file(args.eval_data, "--eval-data")


def calibration_batches(args, model, tokenizer, causal: bool) -> tuple[list[dict], dict]:
    """Calibration batches for ``model`` and a description of them (for the report)."""
    info = {"nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed, "batch_size": args.batch_size}
    if getattr(args, "calib_samples", False):
        return _sampled_calibration(args, model, tokenizer, causal, info)
    if args.calib is not None:
        paragraphs = evaluation.read_text_file(args.calib, "--calib")
        info["source"] = os.fspath(args.calib)
    else:
        paragraphs = None
        info["source"] = "docstrings of the Python standard library: " + ", ".join(evaluation.CALIBRATION_MODULES)
    if tokenizer is None:
        logger.warning("MODEL has no tokenizer: calibrating on %d seeded random token sequences of length %d "
                       "(seed %d) instead of text", args.nsamples, args.seqlen, args.seed)
        info["source"] = "random token ids (the model directory has no tokenizer)"
        info["kind"] = f"{args.nsamples} sequences of {args.seqlen} tokens"
        return evaluation.random_token_batches(vocab_size(model), args.nsamples, args.seqlen, args.seed,
                                               args.batch_size), info
    if causal:
        if paragraphs is None:
            paragraphs = evaluation.docstring_paragraphs(evaluation.CALIBRATION_MODULES)
        batches = evaluation.lm_windows(tokenizer, paragraphs, args.nsamples, args.seqlen, args.seed, args.batch_size)
        info["kind"] = f"{args.nsamples} random windows of {args.seqlen} tokens"
    else:
        sentences = (evaluation.sample_sentences(paragraphs, args.nsamples, args.seed) if paragraphs is not None else
                     evaluation.docstring_sentences(evaluation.CALIBRATION_MODULES, args.nsamples))
        batches = evaluation.tokenize(tokenizer, sentences, args.batch_size, args.seqlen)
        info["kind"] = f"{len(sentences)} sentences, at most {args.seqlen} tokens each"
    return batches, info


def _sampled_calibration(args, model, tokenizer, causal: bool, info: dict) -> tuple[list[dict], dict]:
    if not causal or not callable(getattr(model, "generate", None)):
        raise UsageError(f"--calib-samples: MODEL must be a causal LM that generates text, but it is a "
                         f"{type(model).__name__}")
    if args.seqlen < 2:
        raise UsageError(f"--seqlen: --calib-samples needs at least 2 tokens per sequence, but got {args.seqlen}")
    batches = teacher_samples(model, tokenizer, sequences=args.nsamples, seqlen=args.seqlen,
                              batch_size=args.batch_size, seed=args.seed, progress=not getattr(args, "quiet", False))
    info["source"] = (f"sequences the model sampled from its BOS token (top-k {SAMPLING_TOP_K}, "
                      f"top-p {SAMPLING_TOP_P})")
    info["kind"] = f"{args.nsamples} sampled sequences of {args.seqlen} tokens"
    return batches, info


def evaluation_batches(data: str | None, model, tokenizer, causal: bool, samples: int, seqlen: int, seed: int,
                       batch_size: int) -> tuple[list[dict], str]:
    """Held-out batches: ``data`` (a text file) or the standard-library evaluation docstrings."""
    paragraphs = evaluation.read_text_file(data, "--data") if data is not None else None
    source = os.fspath(data) if data is not None else \
        "docstrings of the Python standard library: " + ", ".join(evaluation.EVALUATION_MODULES)
    if tokenizer is None:
        logger.warning("no tokenizer: evaluating on %d seeded random token sequences (seed %d)", samples, seed + 1)
        return evaluation.random_token_batches(vocab_size(model), samples, seqlen, seed + 1, batch_size), \
            "random token ids (no tokenizer)"
    if causal:
        if paragraphs is None:
            paragraphs = evaluation.docstring_paragraphs(evaluation.EVALUATION_MODULES)
        return evaluation.lm_eval_windows(tokenizer, paragraphs, seqlen, samples, batch_size), source
    sentences = paragraphs[:samples] if paragraphs is not None else \
        evaluation.docstring_sentences(evaluation.EVALUATION_MODULES, samples)
    return evaluation.tokenize(tokenizer, sentences, batch_size, seqlen), source


def vocab_size(model) -> int:
    """The model's vocabulary size, to draw random token ids from (its config's vocab_size)."""
    size = getattr(model.config, "vocab_size", None)
    if not size:
        raise UsageError(f"MODEL: {type(model).__name__} has no tokenizer and its config has no vocab_size; "
                         "cannot make random calibration tokens")
    return int(size)
