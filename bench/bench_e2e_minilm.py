"""End to end: all-MiniLM-L6-v2 after prunekit.prune + prunekit.sparsify_ against its masked dense
self, one sentence at a time (batch 1), on the CPU, side by side in one process.

For each pruning configuration (90% unstructured is the headline; 70%, 50% and 2:4 for context)
the model is pruned once (magnitude; the criterion does not change the speed), copied and
sparsified (format "auto", or a forced format for comparison). For each thread count and each input (single sentences of
increasing length), dense and sparse forwards are timed in alternating rounds; the speed-up is
the median of the per-round ratios (robust to other load on the machine), with its min and max.
The sparse model's outputs are checked against the masked dense model's. Each row records the
machine's 1-minute load average: with other work on the cores, multi-threaded timings (which wait
for a preempted thread at every parallel region) are unreliable, single-threaded ones much less so.

    python bench/bench_e2e_minilm.py [--quick] [--threads 2 1] [--rounds 7]

Writes bench/results/e2e_minilm[_quick].{json,md}.
"""

import argparse
import copy
import os
import statistics

import torch

from _common import time_ms, write_results

import prunekit
from prunekit import PruneConfig
from prunekit.app import evaluation
from prunekit.app.demo import load_minilm
from prunekit.surgery import SparsifyConfig

# (pattern label, prune sparsity, sparsify_ format): the headline is 90% with format="auto" (the
# MLP layers sparse; the 384x384 attention projections stay dense: too small to gain); the forced
# formats show what "auto" avoids.
CONFIGS = [("90%", 0.9, "auto"), ("90%", 0.9, "unstructured"), ("70%", 0.7, "auto"), ("2:4", "2:4", "2:4")]


def inputs_for(tokenizer, quick: bool) -> list[dict]:
    """Single sentences of increasing length (tokens including [CLS] and [SEP])."""
    sentences = evaluation.docstring_sentences(evaluation.EVALUATION_MODULES, 200)
    by_length = sorted(sentences, key=lambda s: len(tokenizer(s)["input_ids"]))
    picks = [by_length[len(by_length) // 2]] if quick else [by_length[0], by_length[len(by_length) // 2], by_length[-1]]
    return [dict(tokenizer(sentence, return_tensors="pt", truncation=True, max_length=128)) for sentence in picks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="90%% only, one sentence, fewer rounds")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to time (default: torch's default, then 1)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating dense/sparse timing rounds")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    threads_list = args.threads or sorted({default_threads, 1}, reverse=True)
    rounds = args.rounds or (3 if args.quick else 7)
    min_run_time = 0.1 if args.quick else 0.3
    configs = CONFIGS[:1] if args.quick else CONFIGS

    model, tokenizer = load_minilm()
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = inputs_for(tokenizer, args.quick)
    rows = []
    for label, sparsity, fmt in configs:
        model.load_state_dict(dense_state)
        prunekit.prune(model, PruneConfig(method="magnitude", sparsity=sparsity, ignore=["pooler"], progress=False))
        sparse = copy.deepcopy(model)
        summary = prunekit.sparsify_(sparse, SparsifyConfig(format=fmt))
        formats = {}
        for held in list(summary.swapped.values()) + ["dense"] * len(summary.kept_dense):
            formats[held] = formats.get(held, 0) + 1
        with torch.no_grad():
            for threads in threads_list:
                torch.set_num_threads(threads)
                for batch in inputs:
                    reference = model(**batch).last_hidden_state
                    error = float((sparse(**batch).last_hidden_state - reference).abs().max())
                    dense_times, sparse_times, ratios = [], [], []
                    for _ in range(rounds):
                        dense_ms = time_ms(lambda: model(**batch), min_run_time)
                        sparse_ms = time_ms(lambda: sparse(**batch), min_run_time)
                        dense_times.append(dense_ms)
                        sparse_times.append(sparse_ms)
                        ratios.append(dense_ms / sparse_ms)
                    row = {
                        "pattern": label, "format": fmt, "threads": threads, "batch": 1,
                        "tokens": int(batch["input_ids"].shape[1]),
                        "dense_ms": statistics.median(dense_times), "sparse_ms": statistics.median(sparse_times),
                        "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
                        "max_abs_error": error, "load_avg_1min": os.getloadavg()[0],
                        "formats": ", ".join(f"{n} {f}" for f, n in sorted(formats.items())),
                        "dense_MB": summary.bytes_before / 1e6, "sparse_MB": summary.bytes_after / 1e6,
                        "linear_MB_before": summary.swapped_bytes_before / 1e6,
                        "linear_MB_after": summary.swapped_bytes_after / 1e6,
                    }
                    rows.append(row)
                    print(f"{label:>4} {fmt:>12} threads {threads} tokens {row['tokens']:>3}: "
                          f"dense {row['dense_ms']:7.2f} ms, sparse {row['sparse_ms']:7.2f} ms, "
                          f"speed-up {row['speedup']:.2f}x "
                          f"[{row['speedup_min']:.2f}, {row['speedup_max']:.2f}], max |error| {error:.1e} "
                          f"({row['formats']})", flush=True)
        torch.set_num_threads(default_threads)
    paths = write_results(
        "e2e_minilm" + ("_quick" if args.quick else ""), rows,
        ["pattern", "format", "threads", "batch", "tokens", "dense_ms", "sparse_ms", "speedup", "speedup_min",
         "speedup_max", "max_abs_error", "formats", "dense_MB", "sparse_MB", "load_avg_1min"],
        "all-MiniLM-L6-v2 end to end, batch 1: sparsify_ vs the masked dense model (CPU)",
    )
    print("wrote", *paths)


if __name__ == "__main__":
    main()
