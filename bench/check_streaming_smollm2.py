"""SmolLM2-135M-Instruct pruned streamed (``prunekit.prune_pretrained``) and in memory
(``prunekit.prune``) with the quality protocol's calibration: masks, weights and held-out perplexity
compared. Writes bench/results/streaming_smollm2.{json,md}.

    python bench/check_streaming_smollm2.py [--runs wanda:0.5,sparsegpt:0.5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="wanda:0.5,sparsegpt:0.5", help="comma-separated method:sparsity")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import RESULTS_DIR, machine_info
    from transformers import AutoModelForCausalLM

    import prunekit
    from prunekit.app.benchmarks.common import write_results
    from prunekit.app.evaluation import lm_quality_batches, perplexity
    from prunekit.hf import load_model, smollm2_path

    source = Path(smollm2_path())
    _, tokenizer, _ = load_model(str(source))
    calib, heldout = lm_quality_batches(tokenizer)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="streaming-smollm2-"))
    try:
        for run in args.runs.split(","):
            method, _, sparsity = run.partition(":")
            config = prunekit.PruneConfig(method=method, sparsity=sparsity if ":" in sparsity else float(sparsity),
                                          ignore=("lm_head",), progress=False)
            out = work / f"{method}-{sparsity.replace(':', '_')}"
            started = time.perf_counter()
            prunekit.prune_pretrained(source, config, calib, out)
            streamed_s = time.perf_counter() - started
            streamed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            in_memory, _, _ = load_model(str(source))
            started = time.perf_counter()
            prunekit.prune(in_memory, config, calib)
            in_memory_s = time.perf_counter() - started
            mask_differences, worst = 0, 0.0
            expected = in_memory.state_dict()
            for key, value in streamed.state_dict().items():
                mask_differences += int(((value == 0) != (expected[key] == 0)).sum())
                worst = max(worst, float((value - expected[key]).abs().max()))
            row = {"method": method, "sparsity": sparsity, "mask_differences": mask_differences,
                   "max_weight_difference": worst, "perplexity_streamed": perplexity(streamed, heldout),
                   "perplexity_in_memory": perplexity(in_memory, heldout), "streamed_s": streamed_s,
                   "in_memory_prune_s": in_memory_s}
            print(row, flush=True)
            rows.append(row)
            del streamed, in_memory
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine_info()
    info["threads"] = args.threads
    info["protocol"] = "lm_quality_batches: 64 x 128 docstring windows calibrate, 64 x 128 Alice windows evaluate"
    paths = write_results(RESULTS_DIR, "streaming_smollm2", rows,
                          ["method", "sparsity", "mask_differences", "max_weight_difference", "perplexity_streamed",
                           "perplexity_in_memory", "streamed_s", "in_memory_prune_s"],
                          "SmolLM2-135M-Instruct: streamed (prune_pretrained) vs in-memory (prune)", machine=info)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
