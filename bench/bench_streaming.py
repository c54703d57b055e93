"""Peak resident memory and time of pruning a Hugging Face model directory in memory
(load, ``prunekit.prune``, ``save_pretrained``) against streamed (``prunekit.prune_pretrained``).

Each run is a fresh subprocess; its peak is VmHWM from /proc/self/status (resident memory, file
pages included). The budget of a streamed run is one block in float32 + the calibration
activations (inputs and outputs of one block) + the embeddings in float32 + 1 GiB. Peak memory does
not depend on the machine's load; the times do (rerun them on a quiet machine).

    python bench/make_synthetic_llama.py build/synthetic-llama
    python bench/bench_streaming.py build/synthetic-llama                      # streamed only
    python bench/bench_streaming.py /tmp/small --modes in-memory,streaming     # both, side by side
    python bench/bench_streaming.py smollm2 --modes in-memory,streaming --compare --name streaming_smollm2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 2**30


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _calibration(config: dict, nsamples: int, seqlen: int, batch_size: int) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(0)
    items = []
    for start in range(0, nsamples, batch_size):
        ids = torch.randint(0, config["vocab_size"], (min(batch_size, nsamples - start), seqlen), generator=generator)
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return items


def child(args) -> None:
    """One run in this process; prints a JSON line with its peak and times."""
    import torch

    import prunekit
    from prunekit.hf import resolve_model

    torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    calib = _calibration(config, args.nsamples, args.seqlen, args.batch_size)
    sparsity = args.sparsity if ":" in args.sparsity else float(args.sparsity)
    prune_config = prunekit.PruneConfig(method=args.method, sparsity=sparsity, ignore=("lm_head",), progress=False)
    started = time.perf_counter()
    if args.mode == "streaming":
        report = prunekit.prune_pretrained(model_dir, prune_config, calib, args.out, offload_dir=args.offload_dir)
        load_s = save_s = None
        prune_s = report.seconds
    else:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        load_s = time.perf_counter() - started
        report = prunekit.prune(model, prune_config, calib)
        prune_s = report.seconds
        saving = time.perf_counter()
        model.save_pretrained(args.out)
        save_s = time.perf_counter() - saving
    print(json.dumps({"peak_bytes": _peak_bytes(), "seconds": time.perf_counter() - started, "load_s": load_s,
                      "prune_s": prune_s, "save_s": save_s, "total_sparsity": report.total_sparsity}), flush=True)


def budget(config: dict, nsamples: int, seqlen: int) -> dict:
    """The bar of a streamed run, in bytes, from the model's config."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = hidden // config["num_attention_heads"] * config.get("num_key_value_heads", config["num_attention_heads"])
    block = 4 * (2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * inter + 2 * hidden)
    embeddings = 4 * vocab * hidden
    activations = 2 * 4 * nsamples * seqlen * hidden
    return {"block_fp32": block, "embeddings_fp32": embeddings, "activations": activations,
            "budget": block + embeddings + activations + GIB,
            "model_fp32": 4 * _parameters(config, block // 4)}


def _parameters(config: dict, per_block: int) -> int:
    heads = 1 if config.get("tie_word_embeddings") else 2
    return config["num_hidden_layers"] * per_block + heads * config["vocab_size"] * config["hidden_size"]


def _run(args, mode: str, method: str, sparsity: str, work: Path) -> dict:
    out = work / f"{mode}-{method}-{sparsity.replace(':', '_')}"
    command = [sys.executable, __file__, args.model, "--child", "--mode", mode, "--method", method,
               "--sparsity", sparsity, "--out", str(out), "--nsamples", str(args.nsamples), "--seqlen",
               str(args.seqlen), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if args.offload and mode == "streaming":
        command += ["--offload-dir", str(work)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} {method} {sparsity} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]) | {"out": out}


def _same_outputs(first: Path, second: Path) -> dict:
    """Masks identical and the largest weight difference of two output directories."""
    import torch
    from safetensors import safe_open

    def tensors(directory: Path):
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as file:
                for key in file.keys():
                    yield key, file.get_tensor(key)

    other = dict(tensors(second))
    mask_differences, worst = 0, 0.0
    for key, tensor in tensors(first):
        mask_differences += int(((tensor == 0) != (other[key] == 0)).sum())
        worst = max(worst, float((tensor.to(torch.float64) - other[key].to(torch.float64)).abs().max()))
    return {"mask_differences": mask_differences, "max_weight_difference": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory (e.g. from make_synthetic_llama.py) or smollm2")
    parser.add_argument("--modes", default="streaming", help="comma-separated: streaming, in-memory")
    parser.add_argument("--runs", default="sparsegpt:0.5,wanda:2:4", help="comma-separated method:sparsity")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--offload", action="store_true", help="streamed runs keep activations in files")
    parser.add_argument("--compare", action="store_true", help="check that in-memory and streamed outputs agree")
    parser.add_argument("--work", type=Path, default=None, help="where outputs go (default: a temporary directory)")
    parser.add_argument("--name", default="streaming", help="results/<name>.{json,md}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--sparsity", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--offload-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import RESULTS_DIR, machine_info

    from prunekit.app.benchmarks.common import write_results
    from prunekit.hf import resolve_model

    model_dir = Path(resolve_model(args.model))
    config = json.loads((model_dir / "config.json").read_text())
    bar = budget(config, args.nsamples, args.seqlen)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-streaming-", dir=model_dir.parent))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for run in args.runs.split(","):
            method, _, sparsity = run.partition(":")
            outputs = {}
            for mode in args.modes.split(","):
                result = _run(args, mode, method, sparsity, work)
                outputs[mode] = result.pop("out")
                row = {"model": args.model, "mode": mode, "method": method, "sparsity": sparsity,
                       "offload": bool(args.offload and mode == "streaming"), **result,
                       "peak_gib": result["peak_bytes"] / GIB, "budget_gib": bar["budget"] / GIB,
                       "model_fp32_gib": bar["model_fp32"] / GIB,
                       "fp32_over_peak": bar["model_fp32"] / result["peak_bytes"],
                       "within_budget": result["peak_bytes"] <= bar["budget"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.compare and len(outputs) == 2:
                agreement = _same_outputs(*outputs.values())
                for row in rows[-2:]:
                    row.update(agreement)
                print(json.dumps(agreement), flush=True)
            for path in outputs.values():
                shutil.rmtree(path, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    columns = ["mode", "method", "sparsity", "offload", "peak_gib", "budget_gib", "model_fp32_gib", "fp32_over_peak",
               "within_budget", "seconds", "prune_s"]
    if args.compare:
        columns += ["mask_differences", "max_weight_difference"]
    for row in rows:
        row.update({f"budget_{k}": v for k, v in bar.items()})
    info = machine_info()
    info["threads"] = args.threads
    info["calibration"] = f"{args.nsamples} x {args.seqlen} random tokens, batches of {args.batch_size}"
    info["model_config"] = {k: config.get(k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                       "vocab_size", "num_attention_heads", "num_key_value_heads")}
    title = f"Streamed vs in-memory pruning of {args.model}: peak memory (VmHWM) and time"
    paths = write_results(RESULTS_DIR, args.name, rows, columns, title, machine=info)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
