"""``prunekit eval``: the perplexity of a causal LM, or the fidelity of an encoder's sentence
embeddings to those of a reference model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunekit.hf import load_model

from .. import evaluation
from .common import DTYPES, UsageError, positive_int
from .data import evaluation_batches


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``eval`` command and its options to ``commands`` (the subparsers of ``prunekit``)."""
    parser = commands.add_parser(
        "eval", parents=[common], help="perplexity of a causal LM, or embedding fidelity of an encoder",
        description="Causal LMs: perplexity on a text file (--data; default: standard-library docstrings). "
                    "Encoders: mean cosine of sentence embeddings against those of --reference.")
    parser.add_argument("model", metavar="MODEL", help="local model directory or hub id")
    parser.add_argument("--data", type=Path, metavar="FILE", help="UTF-8 text file")
    parser.add_argument("--reference", metavar="REFERENCE_MODEL", help="reference model (needed for encoders)")
    parser.add_argument("--samples", type=positive_int, default=64,
                        help="at most this many sequences/sentences (default 64)")
    parser.add_argument("--seqlen", type=positive_int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random tokens for models without tokenizer")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load in (default float32)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.data is not None:
        evaluation.read_text_file(args.data, "--data")  # fail early on a bad file
    model, tokenizer, causal = load_model(args.model, args.dtype)
    reference = reference_tokenizer = None
    if args.reference is not None:
        reference, reference_tokenizer, _ = load_model(args.reference, args.dtype, what="--reference")
    elif not causal:
        raise UsageError(f"MODEL is an encoder ({type(model).__name__}): eval compares its sentence embeddings with "
                         "those of a reference model; pass --reference REFERENCE_MODEL")
    tokenizer = tokenizer or reference_tokenizer
    batches, source = evaluation_batches(args.data, model, tokenizer, causal, args.samples, args.seqlen, args.seed,
                                         args.batch_size)
    result = {"model": args.model, "model_class": type(model).__name__, "data": source}
    if causal:
        result["metric"] = "perplexity"
        result["perplexity"] = evaluation.perplexity(model, batches, not args.quiet)
        if reference is not None:
            result["reference"] = args.reference
            result["reference_perplexity"] = evaluation.perplexity(reference, batches, not args.quiet)
    else:
        result["metric"] = "mean_cosine"
        result["reference"] = args.reference
        reference_embeddings = evaluation.sentence_embeddings(reference, batches, not args.quiet)
        result.update(evaluation.embedding_fidelity(model, reference_embeddings, batches, not args.quiet))
    result["sequences"] = sum(int(b["input_ids"].shape[0]) for b in batches)
    result["tokens"] = sum(int(b["attention_mask"].sum()) for b in batches)
    if args.json:
        print(json.dumps(result, indent=2))
    elif causal:
        line = f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens ({result['sequences']} sequences)"
        if reference is not None:
            line += f"; reference {result['reference_perplexity']:.4f}"
        print(line)
    else:
        print(f"mean cosine to the reference {result['mean_cosine']:.4f} (min {result['min_cosine']:.4f}) over "
              f"{result['sequences']} sentences")
    return 0

