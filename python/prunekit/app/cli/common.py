"""What every command of ``prunekit`` shares: the argument parser with one-line errors, the
error type and exit codes, logging to stderr, and parsers of option values."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERNAL = 1

DTYPES = ("float32", "bfloat16", "float16", "auto")


class UsageError(ValueError):
    """Bad input found by the command line itself."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prunekit prune: error: ... (see prunekit prune --help)``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _TqdmHandler(logging.Handler):
    """Writes log records through tqdm, so that they do not break a progress bar on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def logging_configured(args: argparse.Namespace):
    """Log records of prunekit (and Python warnings) to stderr at the level the options ask for,
    for the duration of a command; the previous logging set-up is restored afterwards."""
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else getattr(logging, args.log_level.upper())
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("prunekit: %(levelname)s: %(message)s" if args.debug else
                                           "prunekit: %(message)s"))
    loggers = {"prunekit": level, "py.warnings": logging.WARNING}
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in loggers}
    for name, logger_level in loggers.items():
        configured = logging.getLogger(name)
        configured.handlers[:] = [handler]
        configured.setLevel(logger_level)
        configured.propagate = False
    logging.captureWarnings(True)
    # transformers and huggingface_hub read these when they are imported (later, and only if needed):
    # their own progress bars off (prunekit shows its own), their log messages at error level.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "debug" if args.debug else "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for name, (handlers, logger_level, propagate) in saved.items():
            restored = logging.getLogger(name)
            restored.handlers[:] = handlers
            restored.setLevel(logger_level)
            restored.propagate = propagate


def parse_sparsity(text: str, what: str = "--sparsity") -> float | str:
    """"0.5" -> 0.5; "2:4" -> "2:4"; anything else (e.g. "3:2", "1.5", "half") raises UsageError."""
    text = text.strip()
    error = UsageError(f"{what}: expected a fraction in [0, 1) or 'n:m' with 0 < n < m (e.g. 0.5 or 2:4), "
                       f"but got {text!r}")
    if ":" in text:
        match = re.fullmatch(r"(\d+):(\d+)", text)
        if not match or not 0 < int(match[1]) < int(match[2]):
            raise error
        return f"{int(match[1])}:{int(match[2])}"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:
        raise error
    return value


def _int_at_least(low: int, expected: str):
    """An argparse type: an integer of at least ``low``, refused as "expected {expected}"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, but got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, but got {text!r}")
        return value

    return parse


# counts (threads, samples, tokens); sizes where 0 turns something off
positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def add_calibration_arguments(parser: argparse.ArgumentParser, nsamples: int,
                              seed: str = "seed of calibration sampling") -> None:
    """The calibration text options data.calibration_batches reads (--calib, --calib-samples,
    --nsamples, --seqlen, --batch-size, --seed): ``nsamples`` is the default number of sequences,
    ``seed`` what --seed seeds."""
    parser.add_argument("--calib", type=Path, metavar="FILE", help="calibration text file (UTF-8)")
    parser.add_argument("--calib-samples", action="store_true",
                        help="calibrate on --nsamples sequences of --seqlen tokens that MODEL (a causal LM) samples "
                             "itself from its BOS token (prunekit.recovery.teacher_samples, seeded by --seed): no "
                             "calibration text needed, and general where the default docstrings are narrow")
    parser.add_argument("--nsamples", type=positive_int, default=nsamples,
                        help=f"calibration sequences (default {nsamples})")
    parser.add_argument("--seqlen", type=positive_int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward (default 8)")
    parser.add_argument("--seed", type=int, default=0, help=f"{seed} (default 0)")


def add_perplexity_arguments(parser: argparse.ArgumentParser) -> None:
    """The before/after perplexity options of the commands that change a causal LM's structure or
    weights (--eval-data, --eval-samples, --no-eval)."""
    parser.add_argument("--eval-data", type=Path, metavar="FILE",
                        help="held-out text for the before/after perplexity (default: standard-library docstrings)")
    parser.add_argument("--eval-samples", type=positive_int, default=64, help="evaluation sequences (default 64)")
    parser.add_argument("--no-eval", action="store_true", help="skip the before/after perplexity")


def prepare_output(args: argparse.Namespace, files, torchrun: bool) -> Path:
    """Prepares --out for ``files`` (report.prepare_output_dir). Under torchrun rank 0 prepares it
    and every rank learns whether that failed, and stops if so."""
    from prunekit import distributed

    from .. import report as reports

    error = None
    if not torchrun or distributed.is_main_process():
        try:
            reports.prepare_output_dir(args.out, args.overwrite, files)
        except ValueError as caught:
            error = caught
    if torchrun:
        distributed.check(error, "preparing --out")
    elif error is not None:
        raise error
    return Path(args.out)
