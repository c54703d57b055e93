"""prunekit against llm-compressor: pruning SmolLM2 with the same calibration windows, in one run.

Each pruning runs in its own subprocess with the same thread count: prunekit (this environment;
``prunekit.prune``) and llm-compressor's ``oneshot`` (sequential pipeline, WandaPruningModifier or
SparseGPTModifier), installed in its own virtual environment by scripts/setup_peer_llmcompressor.sh
(default /opt/venv-llmc). Both read the SmolLM2-135M-Instruct folder prunekit caches (float32) and
the 64 x 128-token calibration windows of ``lm_quality_batches``; the peer's pruned weights come
back as a safetensors file and both are evaluated here by the same held-out perplexity. Times are
of the pruning call alone (``prune_s``: loading and evaluation excluded) and of the whole
subprocess (``process_s``); the ratio column is prunekit's time over the peer's. Without the
peer's environment the benchmark says so and exits 0.

    python bench/bench_peer_llmcompressor.py                 # wanda and sparsegpt at 50%, 2 threads
    python bench/bench_peer_llmcompressor.py --repeats 2 --methods wanda sparsegpt --sparsity 2:4

Writes bench/results/peer_llmcompressor[_<sparsity>].{json,md}. The worker side imports nothing
from prunekit when it runs the peer (prunekit is not installed in the peer's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PEER_PYTHON = "/opt/venv-llmc/bin/python"
METHODS = ("wanda", "sparsegpt")
# llm-compressor 0.14 matches ignore entries as regular expressions when prefixed "re:"; a bare
# "lm_head" left SmolLM2's (tied) LM head pruned in a trial run.
LM_HEAD = ["re:.*lm_head"]


# ----------------------------------------------------------------------------- workers (subprocesses)

def _thread_setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker_prunekit(args) -> dict:
    _thread_setup(args.threads)
    import torch

    import prunekit
    from prunekit.app.cli.common import parse_sparsity
    from prunekit.app.evaluation import lm_quality_batches, perplexity
    from prunekit.hf import load_model

    started = time.perf_counter()
    model, tokenizer, _ = load_model("smollm2")
    _, heldout = lm_quality_batches(tokenizer)
    windows = torch.load(args.calib, weights_only=True)  # the peer's windows, batched as the protocol does
    calib = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)} for ids in windows.split(args.batch_size)]
    loaded = time.perf_counter()
    config = prunekit.PruneConfig(method=args.method, sparsity=parse_sparsity(args.sparsity), progress=False,
                                  within_block=args.within_block, linear_backend=args.linear_backend)
    report = prunekit.prune(model, config, calib)
    pruned = time.perf_counter()
    result = {"load_s": loaded - started, "prune_s": pruned - loaded, "timings": report.timings,
              "linear_backend": report.linear_backend,
              "reconstruction_error_kind": report.reconstruction_error_kind,
              "total_sparsity": report.total_sparsity, "threads": torch.get_num_threads()}
    result["perplexity"] = perplexity(model, heldout)
    return result


def _worker_llmcompressor(args) -> dict:
    _thread_setup(args.threads)
    import importlib.metadata as metadata
    import inspect

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32)
    model.eval()
    windows = torch.load(args.calib, weights_only=True)  # (windows, seqlen) token ids
    dataset = Dataset.from_dict({"input_ids": windows.tolist(),
                                 "attention_mask": torch.ones_like(windows).tolist()})
    structure = "0:0" if ":" not in args.sparsity else args.sparsity
    sparsity = 0.5 if ":" in args.sparsity else float(args.sparsity)
    # Every Linear but the LM head (tied to the embeddings in SmolLM2; prunekit skips it too).
    if args.method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier
        recipe = WandaPruningModifier(sparsity=sparsity, mask_structure=structure, targets=["Linear"],
                                      ignore=LM_HEAD)
    else:
        from llmcompressor.modifiers.pruning import SparseGPTModifier
        recipe = SparseGPTModifier(sparsity=sparsity, mask_structure=structure, targets=["Linear"],
                                   ignore=LM_HEAD, dampening_frac=0.01, block_size=128)
    kwargs = dict(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=int(windows.shape[0]),
                  max_seq_length=int(windows.shape[1]), pipeline="sequential", shuffle_calibration_samples=False)
    accepted = inspect.signature(oneshot).parameters
    if "batch_size" in accepted:
        kwargs["batch_size"] = args.batch_size
    loaded = time.perf_counter()
    oneshot(**{key: value for key, value in kwargs.items() if key in accepted or "kwargs" in accepted})
    pruned = time.perf_counter()
    if bool((model.get_output_embeddings().weight == 0).float().mean() > 0.25):
        raise RuntimeError("llm-compressor pruned the LM head (tied to the embeddings); check the ignore list")
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    from safetensors.torch import save_file
    save_file({name: tensor for name, tensor in state.items() if name != "lm_head.weight"}, args.weights_out)
    return {"load_s": loaded - started, "prune_s": pruned - loaded, "threads": torch.get_num_threads(),
            "llmcompressor": metadata.version("llmcompressor"), "transformers": metadata.version("transformers"),
            "torch": torch.__version__, "batch_size": kwargs.get("batch_size")}


def _worker_main(args) -> None:
    result = _worker_prunekit(args) if args.worker == "prunekit" else _worker_llmcompressor(args)
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- the comparison

def _peer_available(python: str) -> str | None:
    """None if ``python`` imports llmcompressor, else why not."""
    if not os.path.exists(python):
        return f"{python} does not exist"
    probe = subprocess.run([python, "-c", "import llmcompressor"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{python} cannot import llmcompressor: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def _run_worker(python: str, worker: str, method: str, args, work: Path, extra: list[str]) -> dict:
    result_path = work / f"{worker}_{method}.json"
    command = [python, os.path.abspath(__file__), "--worker", worker, "--method", method, "--sparsity", args.sparsity,
               "--threads", str(args.threads), "--result", os.fspath(result_path), *extra]
    environment = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                       TOKENIZERS_PARALLELISM="false")
    if worker == "llmcompressor":
        environment.pop("PYTHONPATH", None)  # the peer's environment only
    started = time.perf_counter()
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"the {worker} worker for {method} failed (exit {completed.returncode}):\n"
                           f"{completed.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    result["process_s"] = elapsed
    return result


def _peer_perplexity(weights: Path) -> tuple[float, float]:
    """Held-out perplexity and achieved sparsity (prunable layers) of the peer's pruned weights."""
    import torch
    from safetensors.torch import load_file

    from prunekit.app.evaluation import lm_quality_batches, perplexity
    from prunekit.calibrate.pipeline import find_prunable_layers
    from prunekit.hf import load_model

    model, tokenizer, _ = load_model("smollm2")
    _, heldout = lm_quality_batches(tokenizer)
    missing, unexpected = model.load_state_dict(load_file(os.fspath(weights)), strict=False)
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise RuntimeError(f"peer weights do not fit SmolLM2: missing {missing}, unexpected {unexpected}")
    zeros = total = 0
    for name, layer in find_prunable_layers(model).items():
        if name == "lm_head":
            continue
        zeros += int((layer.weight == 0).sum())
        total += layer.weight.numel()
    with torch.no_grad():
        return perplexity(model, heldout), zeros / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"], choices=METHODS)
    parser.add_argument("--sparsity", default="0.5", help="0.5 (default) or 2:4")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; the fastest counts")
    parser.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON", DEFAULT_PEER_PYTHON),
                        help=f"python of llm-compressor's environment (default {DEFAULT_PEER_PYTHON})")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="calibration windows per forward, both (prunekit's protocol uses 8)")
    parser.add_argument("--windows", type=int, default=64,
                        help="calibration windows (default 64, the protocol's; fewer for a smoke run)")
    parser.add_argument("--skip-peer", action="store_true", help="prunekit only (no comparison)")
    parser.add_argument("--within-block", default="parallel", choices=("parallel", "sequential"),
                        help="prunekit's PruneConfig.within_block (default parallel, the reference methods)")
    parser.add_argument("--linear-backend", default="auto", choices=("auto", "aten", "onednn"),
                        help="prunekit's PruneConfig.linear_backend (default auto)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    # worker arguments
    parser.add_argument("--worker", choices=("prunekit", "llmcompressor"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--calib", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--weights-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        _worker_main(args)
        return 0

    why = None if args.skip_peer else _peer_available(args.peer_python)
    if why is not None:
        print(f"bench_peer_llmcompressor: skipped: llm-compressor's environment is missing ({why}); "
              "create it with: bash scripts/setup_peer_llmcompressor.sh", flush=True)
        return 0

    import torch

    sys.path.insert(0, os.fspath(Path(__file__).parent))
    from _common import machine_info

    from prunekit.app.report import markdown_table
    from prunekit.app.evaluation import lm_quality_batches, perplexity
    from prunekit.hf import load_model, smollm2_path

    torch.set_num_threads(args.threads)
    model_dir = smollm2_path()
    model, tokenizer, _ = load_model("smollm2")
    calib, heldout = lm_quality_batches(tokenizer)
    dense_perplexity = perplexity(model, heldout)
    del model
    windows = torch.cat([batch["input_ids"] for batch in calib])[: args.windows]
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunekit-peer-") as tmp:
        work = Path(tmp)
        calib_path = work / "calibration_windows.pt"
        torch.save(windows, calib_path)
        for method in args.methods:
            best: dict[str, dict] = {}
            for repeat in range(args.repeats):
                order = ["prunekit", "llmcompressor"] if repeat % 2 == 0 else ["llmcompressor", "prunekit"]
                for who in order:
                    if who == "llmcompressor" and args.skip_peer:
                        continue
                    if who == "prunekit":
                        result = _run_worker(sys.executable, who, method, args, work,
                                             ["--calib", os.fspath(calib_path), "--batch-size", str(args.batch_size),
                                              "--within-block", args.within_block,
                                              "--linear-backend", args.linear_backend])
                    else:
                        weights = work / f"peer_{method}.safetensors"
                        result = _run_worker(args.peer_python, who, method, args, work,
                                             ["--calib", os.fspath(calib_path), "--model-dir", model_dir,
                                              "--weights-out", os.fspath(weights),
                                              "--batch-size", str(args.batch_size)])
                        if who not in best or result["prune_s"] < best[who]["prune_s"]:
                            result["perplexity"], result["total_sparsity"] = _peer_perplexity(weights)
                    print(f"{method} {args.sparsity} {who}: prune {result['prune_s']:.1f} s "
                          f"(process {result['process_s']:.1f} s)", flush=True)
                    if who not in best or result["prune_s"] < best[who]["prune_s"]:
                        best[who] = result
            ours, peer = best["prunekit"], best.get("llmcompressor")
            row = {"method": method, "sparsity": args.sparsity, "calibration": f"{windows.shape[0]}x{windows.shape[1]}",
                   "dense_ppl": dense_perplexity, "prunekit_s": ours["prune_s"], "prunekit_ppl": ours["perplexity"],
                   "prunekit_sparsity": ours["total_sparsity"], "prunekit_timings": ours["timings"],
                   "prunekit_process_s": ours["process_s"], "prunekit_linear_backend": ours["linear_backend"]}
            if peer is not None:
                row.update(llmcompressor_s=peer["prune_s"], llmcompressor_ppl=peer["perplexity"],
                           llmcompressor_sparsity=peer["total_sparsity"], llmcompressor_process_s=peer["process_s"],
                           ratio=ours["prune_s"] / peer["prune_s"], llmcompressor=peer["llmcompressor"],
                           peer_transformers=peer["transformers"], peer_torch=peer["torch"],
                           batch_size=peer["batch_size"])
            rows.append(row)
            print(json.dumps(row), flush=True)

    machine = machine_info()
    name = "peer_llmcompressor" + ("" if args.sparsity == "0.5" else "_" + args.sparsity.replace(":", "of").replace(
        ".", "p")) + ("" if args.windows == 64 else f"_{args.windows}windows") + (
        "" if args.within_block == "parallel" else f"_within_block_{args.within_block}") + (
        "" if args.linear_backend == "auto" else f"_{args.linear_backend}")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{name}.json"
    json_path.write_text(json.dumps({"machine": machine, "threads": args.threads, "repeats": args.repeats,
                                     "within_block": args.within_block,
                                     "rows": rows}, indent=2) + "\n")
    columns = [("method", "method", ""), ("sparsity", "sparsity", ""), ("calibration", "calibration", ""),
               ("prunekit_s", "prunekit s", ".1f"), ("llmcompressor_s", "llm-compressor s", ".1f"),
               ("ratio", "prunekit / peer", ".2f"), ("dense_ppl", "dense ppl", ".2f"),
               ("prunekit_ppl", "prunekit ppl", ".2f"), ("llmcompressor_ppl", "llm-compressor ppl", ".2f"),
               ("prunekit_sparsity", "prunekit sparsity", ".4f"),
               ("llmcompressor_sparsity", "llm-compressor sparsity", ".4f")]
    table_rows = [{key: row.get(key) for key, _, _ in columns} for row in rows]
    stages = [f"- {row['method']}: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds
                                                  in row["prunekit_timings"].items()) for row in rows]
    text = ["# prunekit against llm-compressor: pruning SmolLM2-135M on CPU", "",
            "Machine: " + ", ".join(f"{key}={value}" for key, value in machine.items()), "",
            f"Each pruning in its own subprocess, {args.threads} threads, fastest of {args.repeats}; seconds of the "
            f"pruning call alone (prunekit.prune with within_block={args.within_block!r}, linear_backend="
            f"{args.linear_backend!r}: {', '.join(sorted({str(row['prunekit_linear_backend']) for row in rows}))} / "
            "llm-compressor oneshot, "
            "sequential pipeline), same calibration windows, perplexity on the same held-out text.", "",
            markdown_table(table_rows, columns), "", "prunekit's stages (PruneReport.timings):", "", *stages]
    if rows and "llmcompressor" in rows[0]:
        text += ["", f"Peer: llmcompressor {rows[0]['llmcompressor']}, transformers {rows[0]['peer_transformers']}, "
                 f"torch {rows[0]['peer_torch']}, calibration batch size {rows[0]['batch_size']}."]
    md_path = args.out / f"{name}.md"
    md_path.write_text("\n".join(text) + "\n")
    print("wrote", json_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
