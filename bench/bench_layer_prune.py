"""Batch-1 generation speed of layer-pruned SmolLM2-135M against the dense model, side by side in
one process: the dense model, 25% of the blocks removed (saved with save_pretrained and reloaded
with AutoModelForCausalLM.from_pretrained), and attention/MLP sublayers removed with the same
parameter budget (saved with prunekit.save, reloaded with prunekit.load). Every model greedily
generates the same tokens from the same prompt; the runs are interleaved and the median of
``--repeats`` taken. Writes bench/results/layer_prune_smollm2.{json,md} with the CPU, ISA,
threads and commit.

    python bench/bench_layer_prune.py --threads 2 --ratio 0.25
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.app.benchmarks.common import machine_info
from prunekit.app.evaluation import lm_quality_batches
from prunekit.hf import load_model

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Alice was beginning to get very tired of sitting by her sister on the bank, and"


def generate_seconds(model, ids, new_tokens: int) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - started, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.25, help="fraction of the blocks removed (default 0.25)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calib-windows", type=int, default=16, help="calibration windows for the scores")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dense, tokenizer, _ = load_model("smollm2")
    calib, _ = lm_quality_batches(tokenizer, nsamples=args.calib_windows, eval_windows=1)
    models = {"dense": dense}
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        block, _, _ = load_model("smollm2")
        reports["block"] = prunekit.prune_layers(block, args.ratio, calib, "block", progress=False).to_dict()
        block.save_pretrained(Path(tmp) / "block")
        from transformers import AutoModelForCausalLM

        models["block (from_pretrained)"] = AutoModelForCausalLM.from_pretrained(Path(tmp) / "block").eval()
        sub, _, _ = load_model("smollm2")
        reports["sublayer"] = prunekit.prune_layers(sub, args.ratio, calib, "sublayer", budget="parameters",
                                                    progress=False).to_dict()
        prunekit.save(sub, Path(tmp) / "sublayer")
        models["sublayer (prunekit.load)"] = prunekit.load(Path(tmp) / "sublayer", mmap=False)
    del block, sub

    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    times = {name: [] for name in models}
    texts = {}
    for name, model in models.items():  # warm-up, and the generated text
        _, out = generate_seconds(model, ids, args.new_tokens)
        texts[name] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(generate_seconds(model, ids, args.new_tokens)[0])
    dense_median = statistics.median(times["dense"])
    rows = []
    for name, model in models.items():
        median = statistics.median(times[name])
        rows.append({"model": name, "blocks": model.config.num_hidden_layers,
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "median_seconds": median, "tokens_per_second": args.new_tokens / median,
                     "speedup_vs_dense": dense_median / median, "text": texts[name]})
    info = machine_info()
    commit = os.popen("git rev-parse --short HEAD").read().strip()
    result = {"ratio": args.ratio, "threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "prompt": PROMPT, "rows": rows, "reports": reports, "machine": info, "commit": commit}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "layer_prune_smollm2.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Layer pruning: SmolLM2-135M batch-1 generation ({args.new_tokens} new tokens, greedy)", "",
             f"Commit {commit}; {args.threads} threads; {json.dumps(info)}", "",
             f"Removed {args.ratio:.0%} of the blocks; sublayers removed with the same parameter budget.", "",
             "| model | blocks | parameters | median s | tokens/s | speed-up vs dense |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['blocks']} | {row['parameters']:,} | {row['median_seconds']:.3f} | "
                     f"{row['tokens_per_second']:.1f} | {row['speedup_vs_dense']:.2f}x |")
    lines += ["", "Generated text:", ""] + [f"- {row['model']}: {row['text']!r}" for row in rows]
    (RESULTS / "layer_prune_smollm2.md").write_text("\n".join(lines) + "\n")
    for row in rows:
        print(f"{row['model']:>26}: {row['tokens_per_second']:6.1f} tokens/s, {row['speedup_vs_dense']:.2f}x dense, "
              f"{row['parameters']:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
