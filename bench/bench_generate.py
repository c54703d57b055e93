"""SmolLM2-135M greedy generation at batch 1 with the KV cache: the sparsified model against its
masked dense self, side by side in one process, fp32 (and bf16 where the CPU has bf16 arithmetic).

The model is pruned with Wanda (one-shot: the dense model's statistics gathered once, the shared
calibration protocol's 64 x 128 docstring tokens) at each sparsity; the criterion does not change
the speed. For each sparsity and dtype the masked dense model and a copy sparsified with an
explicit format ("2:4" for 2:4, else "unstructured") generate the same prompt, alternately, for
``--repeats`` rounds; the speed-up is the ratio of the median times (the per-round ratios are
recorded too) and the generated tokens must be the masked dense model's.

Where the time goes (the Amdahl bound): per generated token, the dense model's time is split by
timing, in model order as a decode step streams them, the 210 prunable linears of the blocks at
one row (``linears``), the LM head tied to the embeddings (49152 x 576, never pruned: ``head``)
and the rest (attention, norms, rotary embeddings, the KV cache, Python and Hugging Face per-step
work: ``rest`` = the measured decode step - linears - head). Only ``linears`` can shrink, so the
end-to-end speed-up is at most step / (step - linears) however fast the sparse kernels are; with
the sparse linears' measured time the expected speed-up is step / (step - linears + sparse
linears). A short torch.profiler trace of decode steps names the ops the rest goes to.

    python bench/bench_generate.py [--quick] [--threads 2] [--repeats 5] [--tokens 64]
        [--sparsities 0.5 2:4 0.7 0.9] [--dtypes float32 bfloat16] [--no-profile]

Writes bench/results/generate_smollm2[_quick].{json,md}. Timings are meaningful only on a quiet
machine (each row records the 1-minute load average).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import RESULTS_DIR, machine_info

from prunekit import build_info
from prunekit.app import evaluation
from prunekit.app.demo_llm import (PROMPT, DenseStatistics, compare_generation, load_smollm2, sparsify_format)
from prunekit.app.report import markdown_table
from prunekit.surgery import SparsifyConfig, sparsify_

SPARSITIES = (0.5, "2:4", 0.7, 0.9)
# The bars for fp32 tokens/s, sparse over masked dense.
BARS = {"0.5": 1.3, "2:4": 1.3, "0.7": 1.6, "0.9": 2.2}
COLUMNS = [("sparsity", "sparsity", ""), ("dtype", "dtype", ""), ("format", "format", ""),
           ("dense_tokens_per_s", "masked dense tok/s", ".1f"), ("sparse_tokens_per_s", "sparse tok/s", ".1f"),
           ("speedup", "speed-up", ".2f"), ("speedup_min", "min", ".2f"), ("speedup_max", "max", ".2f"),
           ("bar", "bar", ""), ("same_tokens", "same tokens", ""), ("dense_decode_ms", "dense ms/token", ".2f"),
           ("sparse_decode_ms", "sparse ms/token", ".2f"), ("linears_ms", "dense linears ms", ".2f"),
           ("sparse_linears_ms", "sparse linears ms", ".2f"), ("head_ms", "LM head ms", ".2f"),
           ("rest_ms", "rest ms", ".2f"), ("bound", "Amdahl bound", ".2f"), ("expected", "expected", ".2f"),
           ("lp_error_ratio", "bf16 error ratio", ".2f"), ("first_difference", "first difference", ""),
           ("lp_first_difference_margin", "margin there", ".3f"), ("dense_mb", "dense MB", ".1f"),
           ("sparse_mb", "sparse MB", ".1f"), ("load", "load avg", ".2f")]


def has_bf16_arithmetic() -> bool:
    """Whether the CPU computes in bf16 (AVX-512 BF16 or AMX-BF16), as prunekit's build detected."""
    return any("bf16" in feature for feature in build_info()["cpu_features"])


def _median_ms(fn, rounds: int = 7, calls: int = 3) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - started) / calls)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def linears_ms(model: torch.nn.Module, names: list[str], dtype: torch.dtype) -> float:
    """Milliseconds for one row through the named linear modules in model order, as one decode
    step streams their weights (each module called as the model calls it)."""
    modules = dict(model.named_modules())
    calls = [(modules[name], torch.randn(1, 1, modules[name].in_features, dtype=dtype)) for name in names]

    def step():
        for module, x in calls:
            module(x)
    step()
    return _median_ms(step)


@torch.no_grad()
def head_ms(model: torch.nn.Module, dtype: torch.dtype) -> float:
    head = model.get_output_embeddings()
    x = torch.randn(1, 1, head.in_features, dtype=dtype)
    head(x)
    return _median_ms(lambda: head(x))


@torch.no_grad()
def low_precision_agreement(reference: torch.nn.Module, dense: torch.nn.Module, sparse: torch.nn.Module,
                            prompt_ids: torch.Tensor, result: dict) -> dict:
    """Why a low-precision sparse model's greedy tokens may differ from its masked dense self, and
    whether it is as accurate (the 2x rule): both low-precision models are run teacher-forced on the
    dense one's prompt + generated tokens beside the fp32 masked ``reference``. Reports the relative
    logit error of each against fp32 and their ratio (sparse over dense, the rule's bar 2), how often
    their argmax agrees at the same positions, and, at the first free-running difference, the dense
    model's top-1 - top-2 logit margin (a near tie that one rounding step flips) beside the sparse
    model's logit error there."""
    ids = torch.cat([prompt_ids, torch.tensor([result["dense_token_ids"]])], dim=1)
    start = prompt_ids.shape[1] - 1  # logits that predict the generated tokens
    logits = {key: model(input_ids=ids).logits[0, start:-1].float()
              for key, model in (("reference", reference), ("dense", dense), ("sparse", sparse))}
    error = {key: float((logits[key] - logits["reference"]).norm() / logits["reference"].norm())
             for key in ("dense", "sparse")}
    agree = float((logits["dense"].argmax(-1) == logits["sparse"].argmax(-1)).float().mean())
    row = {"lp_dense_logit_error": error["dense"], "lp_sparse_logit_error": error["sparse"],
           "lp_error_ratio": error["sparse"] / error["dense"] if error["dense"] > 0 else None,
           "lp_teacher_forced_argmax_agreement": agree, "lp_first_difference_margin": None,
           "lp_first_difference_sparse_error": None}
    first = result["first_difference"]
    if first is not None:
        top2 = logits["dense"][first].topk(2).values
        row["lp_first_difference_margin"] = float(top2[0] - top2[1])
        row["lp_first_difference_sparse_error"] = float((logits["sparse"][first] - logits["dense"][first]).abs().max())
    return row


@torch.no_grad()
def profile_decode(model: torch.nn.Module, input_ids: torch.Tensor, tokens: int = 16, top: int = 12) -> dict:
    """Self CPU time per op over ``tokens`` decode steps (torch.profiler), the top ``top`` ops and
    the share of the wall time no op accounts for (Python, module calls, Hugging Face per step)."""
    from torch.profiler import ProfilerActivity, profile

    from prunekit.app.demo_llm import greedy_generate

    greedy_generate(model, input_ids, 2)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        started = time.perf_counter()
        greedy_generate(model, input_ids, tokens)
        wall_ms = 1e3 * (time.perf_counter() - started)
    events = trace.key_averages()
    rows = sorted(({"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in events),
                  key=lambda r: -r["self_ms"])
    ops_ms = sum(r["self_ms"] for r in rows)
    return {"tokens": tokens, "wall_ms": wall_ms, "ops_ms": ops_ms,
            "not_in_ops_share": max(0.0, 1 - ops_ms / wall_ms), "top": rows[:top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50%% and 90%% fp32, 16 calibration windows, 2 rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--repeats", type=int, default=None, help="alternating dense/sparse rounds (default 5)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation (default 64)")
    parser.add_argument("--sparsities", nargs="+", default=None, help="default: 0.5 2:4 0.7 0.9")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=("float32", "bfloat16"),
                        help="default: float32, and bfloat16 where the CPU has bf16 arithmetic")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler trace")
    parser.add_argument("--nsamples", type=int, default=None,
                        help="calibration windows of 128 tokens (default 64, --quick 16)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="directory for the results (default bench/results)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sparsities = [s if ":" in s else float(s) for s in args.sparsities] if args.sparsities else \
        ([0.5, 0.9] if args.quick else list(SPARSITIES))
    dtypes = args.dtypes or (["float32"] + (["bfloat16"] if has_bf16_arithmetic() and not args.quick else []))
    repeats = args.repeats or (2 if args.quick else 5)

    model, tokenizer = load_smollm2()
    nsamples = args.nsamples or (16 if args.quick else 64)
    calib, _ = evaluation.lm_quality_batches(tokenizer, nsamples=nsamples, eval_windows=1)
    prompt_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    started = time.perf_counter()
    dense_statistics = DenseStatistics(model, calib)
    print(f"calibration statistics: {time.perf_counter() - started:.1f} s", flush=True)
    names = list(dense_statistics.layers)
    dense_weights = {name: layer.weight.detach().clone() for name, layer in dense_statistics.layers.items()}

    rows, profiles = [], {}
    for sparsity in sparsities:
        with torch.no_grad():
            for name, layer in dense_statistics.layers.items():
                layer.weight.copy_(dense_weights[name])
        dense_statistics.prune(model, "wanda", sparsity)
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            masked = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
            sparse = copy.deepcopy(masked)
            fmt = sparsify_format(sparsity)
            summary = sparsify_(sparse, SparsifyConfig(format=fmt))
            result = compare_generation(masked, sparse, prompt_ids, args.tokens, repeats)
            dense_linears = linears_ms(masked, names, dtype)
            sparse_linears = linears_ms(sparse, names, dtype)
            head = head_ms(masked, dtype)
            step = result["dense_decode_ms"]
            rest = step - dense_linears - head
            row = {"sparsity": str(sparsity), "dtype": dtype_name, "format": fmt, "method": "wanda",
                   **{k: v for k, v in result.items() if not k.endswith("token_ids")},
                   "speedup_min": min(result["round_speedups"]), "speedup_max": max(result["round_speedups"]),
                   "bar": BARS.get(str(sparsity)) if dtype == torch.float32 else None,
                   "linears_ms": dense_linears, "sparse_linears_ms": sparse_linears, "head_ms": head,
                   "rest_ms": rest, "linears_share": dense_linears / step, "head_share": head / step,
                   "bound": step / (step - dense_linears) if step > dense_linears else None,
                   "expected": step / (step - dense_linears + sparse_linears),
                   "linears_speedup": dense_linears / sparse_linears,
                   "dense_mb": summary.bytes_before / 1e6, "sparse_mb": summary.bytes_after / 1e6,
                   "layers_sparsified": len(summary.swapped), "load": os.getloadavg()[0],
                   "text": tokenizer.decode(result["dense_token_ids"])}
            row["meets_bar"] = None if row["bar"] is None else row["speedup"] >= row["bar"]
            if dtype != torch.float32:
                row.update(low_precision_agreement(model, masked, sparse, prompt_ids, result))
            rows.append(row)
            print(f"{sparsity} {dtype_name}: {row['speedup']:.2f}x ({row['dense_tokens_per_s']:.1f} -> "
                  f"{row['sparse_tokens_per_s']:.1f} tok/s), same tokens {row['same_tokens']}, decode step "
                  f"{step:.2f} ms = linears {dense_linears:.2f} + head {head:.2f} + rest {rest:.2f}; sparse linears "
                  f"{sparse_linears:.2f} ms; bound {row['bound'] or float('nan'):.2f}x, expected "
                  f"{row['expected']:.2f}x", flush=True)
            if dtype != torch.float32:
                print(f"  vs fp32: logit error dense {row['lp_dense_logit_error']:.2e}, sparse "
                      f"{row['lp_sparse_logit_error']:.2e} (ratio {row['lp_error_ratio']:.2f}, 2x rule), "
                      f"teacher-forced argmax agreement {row['lp_teacher_forced_argmax_agreement']:.3f}; "
                      f"first difference {row['first_difference']}, dense margin there "
                      f"{row['lp_first_difference_margin']}", flush=True)
            if not args.no_profile and dtype == torch.float32 and sparsity == sparsities[-1]:
                profiles = {key: {"sparsity": str(sparsity), **profile_decode(m, prompt_ids)}
                            for key, m in (("dense", masked), ("sparse", sparse))}
            del sparse
    with torch.no_grad():
        for name, layer in dense_statistics.layers.items():
            layer.weight.copy_(dense_weights[name])
    write(rows, profiles, args, names)
    # fp32 tokens must be identical; low precision must meet the 2x rule (its tokens may part at a near tie).
    failed = [row for row in rows if not row["same_tokens"] and (
        row["dtype"] == "float32" or row.get("lp_error_ratio") is None or row["lp_error_ratio"] > 2)]
    if failed:
        print("the sparse model's tokens differ from the masked dense model's: "
              + ", ".join(f"{row['sparsity']} {row['dtype']}" for row in failed), file=sys.stderr)
        raise SystemExit(1)


def write(rows: list[dict], profiles: dict, args, names: list[str]) -> None:
    import json

    machine = machine_info()
    name = f"generate_smollm2{'_quick' if args.quick else ''}"
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps({"machine": machine, "prompt": PROMPT, "rows": rows,
                                                          "profile": profiles}, indent=2) + "\n")
    text = ["# SmolLM2-135M greedy generation, batch 1, KV cache: sparse against masked dense", "",
            "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "",
            f"Wanda (one-shot) at each sparsity; `sparsify_` with an explicit format; {args.tokens} new tokens; "
            f"prompt {PROMPT!r}; speed-up = median masked dense time / median sparse time over alternating rounds "
            "(min and max of the per-round ratios beside it). Per decode step: the dense model's "
            f"{len(names)} block linears at one row (dense linears), the tied LM head (49152 x 576, never pruned), "
            "the rest (attention, norms, KV cache, Python / Hugging Face per step). Amdahl bound = step / (step - "
            "dense linears): the speed-up with infinitely fast sparse linears; expected = step / (step - dense "
            "linears + sparse linears). bf16 rows: tokens may part where the dense model's top two logits are "
            "within a rounding step (margin there); bf16 error ratio = relative logit error against the fp32 "
            "masked model, sparse over masked dense, teacher-forced on the dense tokens (the 2x rule: <= 2).", "",
            markdown_table(rows, COLUMNS), ""]
    for key, profile in profiles.items():
        text += [f"## Where a {key} decode step goes (torch.profiler, {profile['tokens']} tokens, "
                 f"sparsity {profile['sparsity']}, fp32)", "",
                 f"Wall {profile['wall_ms']:.1f} ms, ops' self time {profile['ops_ms']:.1f} ms: "
                 f"{100 * profile['not_in_ops_share']:.0f}% outside any op (Python, module calls).", "",
                 markdown_table(profile["top"], [("op", "op", ""), ("calls", "calls", ""),
                                                 ("self_ms", "self ms", ".2f")]), ""]
    (results / f"{name}.md").write_text("\n".join(text))
    print("wrote", results / f"{name}.json", results / f"{name}.md")


if __name__ == "__main__":
    main()
