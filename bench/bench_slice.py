"""SliceGPT on SmolLM2-135M: block parameters, perplexity against prunekit's channel pruning at the
same block parameter count, and batch-1 greedy generation tokens/s of the sliced models against the
dense model, side by side in one process.

Quality (``--part quality``; deterministic, any machine): the shared protocol (64 x 128 docstring
tokens calibrate, 64 x 128 held-out Alice in Wonderland tokens evaluate). Each SliceGPT variant at
``--ratio`` (bases "sublayer" / "block", embeddings sliced or kept) is compared with
``prune_structured`` removing MLP channels (FLAP and Wanda importances) until the decoder blocks
have at most as many parameters as the sliced ones (whole-model counts are recorded too: slicing
the embeddings unties SmolLM2's tied 49152 x 576 LM head).

Timing (``--part timing``; the lead runs it on a quiet machine): for each SliceGPT variant, the
dense model and the sliced one generate the same prompt greedily with the KV cache, alternately,
for ``--repeats`` rounds (prunekit.app.demo_llm.compare_generation); the speed-up is the ratio of
the median times; a batch-1 forward of 128 tokens (prefill) is timed the same way.

    python bench/bench_slice.py --part quality            # writes bench/results/slicegpt_smollm2_quality.{json,md}
    python bench/bench_slice.py --part quality --calib samples  # ..._quality_self_calibration.{json,md}
    python bench/bench_slice.py --part timing --threads 2 # writes bench/results/slicegpt_smollm2_timing.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from _common import RESULTS_DIR, machine_info, sampled_like

import prunekit
from prunekit.app import evaluation
from prunekit.app.demo_llm import PROMPT, compare_generation, load_smollm2
from prunekit.app.report import markdown_table

VARIANTS = {  # name -> slice_ keyword arguments
    "sublayer": {"bases": "sublayer"},
    "block": {"bases": "block"},
    "sublayer, keep embeddings": {"bases": "sublayer", "keep_embeddings": True},
    "block, keep embeddings": {"bases": "block", "keep_embeddings": True},
    "sublayer, normalized PCA": {"bases": "sublayer", "pca": "normalized"},
    "sublayer, normalized PCA, keep embeddings": {"bases": "sublayer", "pca": "normalized", "keep_embeddings": True},
}
CHANNEL_METHODS = ("flap", "wanda")
QUALITY_COLUMNS = [("method", "method", ""), ("variant", "variant", ""), ("block_params", "block params", ","),
                   ("block_reduction", "blocks removed", ".1%"), ("params", "model params", ","),
                   ("perplexity", "perplexity", ".2f"), ("seconds", "seconds", ".1f")]
TIMING_COLUMNS = [("variant", "sliced model", ""), ("dense_tokens_per_s", "dense tok/s", ".1f"),
                  ("sliced_tokens_per_s", "sliced tok/s", ".1f"), ("speedup", "speed-up", ".3f"),
                  ("speedup_min", "min", ".3f"), ("speedup_max", "max", ".3f"),
                  ("dense_prefill_ms", "dense prefill ms", ".1f"), ("sliced_prefill_ms", "sliced prefill ms", ".1f"),
                  ("prefill_speedup", "prefill speed-up", ".3f"), ("same_tokens", "same tokens", ""),
                  ("load", "load avg", ".2f")]


def block_params(model) -> int:
    return sum(p.numel() for p in model.model.layers.parameters())


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def sliced(model, ratio: float, calib, variant: str):
    copy_ = copy.deepcopy(model)
    started = time.perf_counter()
    report = prunekit.slice_(copy_, ratio, calib, progress=False, **VARIANTS[variant])
    return copy_, report, time.perf_counter() - started


def channel_pruned(model, calib, method: str, max_block_params: int):
    """``model`` with MLP channels removed (``method`` importance) until its decoder blocks hold at
    most ``max_block_params`` parameters."""
    config = model.config
    mlp_per_block = 3 * config.hidden_size * config.intermediate_size
    per_block_other = block_params(model) // config.num_hidden_layers - mlp_per_block
    mlp_per_channel = 3 * config.hidden_size
    # FLAP's bias compensation gives every down projection a bias (hidden_size parameters per block)
    compensation = config.hidden_size if method == "flap" else 0
    kept = (max_block_params // config.num_hidden_layers - per_block_other - compensation) // mlp_per_channel
    while True:  # a safeguard: step down until under the budget
        copy_ = copy.deepcopy(model)
        sparsity = 1 - (kept + 0.25) / config.intermediate_size  # kept_units rounds half up: exactly `kept`
        started = time.perf_counter()
        prunekit.prune_structured(copy_, prunekit.StructuredConfig(method=method, sparsity={"mlp": sparsity},
                                                                   progress=False), calib)
        seconds = time.perf_counter() - started
        if block_params(copy_) <= max_block_params:
            return copy_, kept, seconds
        kept -= 1


def quality(args, model, tokenizer, on_row) -> list[dict]:
    calib, heldout = evaluation.lm_quality_batches(tokenizer)
    if args.calib == "samples":  # as many windows, sampled by the dense model from its BOS token
        calib = sampled_like(model, tokenizer, calib)
    with torch.no_grad():
        dense_ppl = evaluation.perplexity(model, heldout)
    rows = [{"method": "dense", "variant": "-", "block_params": block_params(model), "block_reduction": 0.0,
             "params": params(model), "perplexity": dense_ppl, "seconds": 0.0}]
    on_row(rows)
    dense_blocks = block_params(model)
    for variant in args.variants:
        sliced_model, report, seconds = sliced(model, args.ratio, calib, variant)
        with torch.no_grad():
            ppl = evaluation.perplexity(sliced_model, heldout)
        rows.append({"method": f"SliceGPT {args.ratio:g}", "variant": variant,
                     "block_params": report.block_params_after,
                     "block_reduction": report.block_params_reduction, "params": report.params_after,
                     "perplexity": ppl, "seconds": seconds, "dims": report.dims["blocks"][1],
                     "head_untied": report.head_untied})
        on_row(rows)
        del sliced_model
        for method in args.channel_methods:
            pruned, kept, seconds = channel_pruned(model, calib, method, report.block_params_after)
            with torch.no_grad():
                ppl = evaluation.perplexity(pruned, heldout)
            rows.append({"method": f"channels ({method})", "variant": f"MLP {kept}/{model.config.intermediate_size}, "
                                                                      f"matching {variant}",
                         "block_params": block_params(pruned),
                         "block_reduction": 1 - block_params(pruned) / dense_blocks,
                         "params": params(pruned), "perplexity": ppl, "seconds": seconds})
            on_row(rows)
            del pruned
    return rows


def _prefill_ms(model, ids) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        model(input_ids=ids)
        return 1e3 * (time.perf_counter() - started)


def timing(args, model, tokenizer, on_row) -> list[dict]:
    calib, _ = evaluation.lm_quality_batches(tokenizer, eval_windows=1)
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    prefill_ids = torch.randint(0, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
    rows = []
    for variant in args.variants:
        sliced_model, report, _ = sliced(model, args.ratio, calib, variant)
        with torch.no_grad():
            result = compare_generation(model, sliced_model, prompt, args.tokens, args.repeats)
            prefill = {"dense": [], "sliced": []}
            for _ in range(2):  # warm-up
                _prefill_ms(model, prefill_ids), _prefill_ms(sliced_model, prefill_ids)
            for _ in range(args.repeats):
                prefill["dense"].append(_prefill_ms(model, prefill_ids))
                prefill["sliced"].append(_prefill_ms(sliced_model, prefill_ids))
        dense_prefill, sliced_prefill = statistics.median(prefill["dense"]), statistics.median(prefill["sliced"])
        rows.append({"variant": f"SliceGPT {args.ratio:g}, {variant}",
                     "dense_tokens_per_s": result["dense_tokens_per_s"],
                     "sliced_tokens_per_s": result["sparse_tokens_per_s"], "speedup": result["speedup"],
                     "speedup_min": min(result["round_speedups"]), "speedup_max": max(result["round_speedups"]),
                     "dense_prefill_ms": dense_prefill, "sliced_prefill_ms": sliced_prefill,
                     "prefill_speedup": dense_prefill / sliced_prefill, "same_tokens": result.get("same_tokens"),
                     "new_tokens": args.tokens, "repeats": args.repeats, "block_params": report.block_params_after,
                     "load": os.getloadavg()[0]})
        on_row(rows)
        del sliced_model
    return rows


def write(name: str, title: str, rows: list[dict], columns, notes: str) -> None:
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    text = (f"# {title}\n\n{notes}\n\nMachine: {info.get('cpu')}, ISA {prunekit.build_info()['cpu_isa_selected']}, "
            f"{info['torch_threads']} torch threads, commit {info.get('commit')}.\n\n{markdown_table(rows, columns)}\n")
    (RESULTS_DIR / f"{name}.md").write_text(text)
    print(json.dumps(rows[-1]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("quality", "timing"), required=True)
    parser.add_argument("--ratio", type=float, default=0.25, help="slicing ratio (default 0.25)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--channel-methods", nargs="*", default=list(CHANNEL_METHODS))
    parser.add_argument("--calib", choices=("docstrings", "samples"), default="docstrings",
                        help="quality: calibrate on the protocol's docstrings, or on as many sequences the dense "
                             "model samples")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="alternating dense/sliced rounds (timing)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation (timing)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2()
    if args.part == "quality":
        sampled = args.calib == "samples"
        quality(args, model, tokenizer, lambda rows: write(
            "slicegpt_smollm2_quality" + ("_self_calibration" if sampled else ""),
            "SliceGPT on SmolLM2-135M: parameters and perplexity", rows, QUALITY_COLUMNS,
            "Perplexity on 64 x 128 held-out tokens of Alice in Wonderland after calibrating on "
            + ("64 sequences of 128 tokens that the dense model samples from its BOS token (`teacher_samples`, "
               "seed 0)" if sampled else "64 x 128 tokens of Python docstrings (`lm_quality_batches`)")
            + ". Channel pruning removes MLP channels until the decoder blocks hold at most the sliced model's block "
              f"parameters. `python bench/bench_slice.py --part quality --calib {args.calib}`."))
    else:
        timing(args, model, tokenizer, lambda rows: write(
            "slicegpt_smollm2_timing", "SliceGPT on SmolLM2-135M: batch-1 generation", rows, TIMING_COLUMNS,
            f"Greedy generation of {args.tokens} tokens with the KV cache at batch 1, dense and sliced "
              f"alternately for {args.repeats} rounds, median times; prefill: one forward of 128 tokens. "
              "`python bench/bench_slice.py --part timing`."))


if __name__ == "__main__":
    main()
