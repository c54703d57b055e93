"""One rank of the distributed tests, started by test_distributed.py with torchrun's environment
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT). It runs every
scenario in one process group (process start-up dominates the cost) and saves what it saw to
``<out>/rank<r>_<scenario>.pt`` for the test to compare with a single-process run.

Usage: python _worker.py OUT_DIR
"""

import os
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tiny_models

from prunekit import distributed  # noqa: E402

from distributed_scenarios import FAIL_BLOCK, RUNS, run_scenario  # noqa: E402


def _save(out: Path, rank: int, name: str, result: dict) -> None:
    torch.save(result, out / f"rank{rank}_{name}.pt")


def main() -> int:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    assert distributed.init_from_env(), "expected WORLD_SIZE > 1"
    rank = distributed.get_rank()
    assert distributed.get_world_size() == 2
    assert distributed.local_device() == torch.device("cpu")

    # 1. Runs that must match a single process: masks identical, weights within 1e-5.
    for name in RUNS:
        started = time.perf_counter()
        model, report = run_scenario(name)
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2}
        _save(out, rank, name, {"weights": weights, "report": report.to_dict(),
                                "seconds": time.perf_counter() - started})

    # 2. The final checkpoint of a successful run: written once, by rank 0, under its final name.
    checkpoint = out / "final.pt"
    distributed.save_checkpoint(checkpoint, lambda tmp: torch.save({"rank": rank, "weights": weights}, tmp))
    _save(out, rank, "checkpoint", {"exists": checkpoint.exists(),
                                    "writer": torch.load(checkpoint)["rank"] if checkpoint.exists() else None})

    # 3. Rank 1 raises mid-run (statistics pass of a later block): every rank raises a
    #    DistributedError naming rank 1, and no checkpoint appears.
    failed_checkpoint = out / "failed.pt"
    started = time.perf_counter()
    result = {}
    try:
        run_scenario("wanda", fail_rank=1, fail_block=FAIL_BLOCK)
        distributed.save_checkpoint(failed_checkpoint, lambda tmp: torch.save({}, tmp))
        result["error"] = None
    except Exception as error:  # noqa: BLE001 - the test inspects it
        result.update(error=f"{type(error).__name__}: {error}", type=type(error).__name__,
                      failed_ranks=getattr(error, "failed_ranks", None),
                      is_runtime_error=isinstance(error, RuntimeError))
    result.update(seconds=time.perf_counter() - started, checkpoint_exists=failed_checkpoint.exists(),
                  leftovers=sorted(p.name for p in out.iterdir() if "failed" in p.name))
    _save(out, rank, "soft_failure", result)

    # 4. The ranks were given different models: every rank refuses, naming what differs.
    result = {}
    try:
        run_scenario("wanda", other_model_rank=1)
        result["error"] = None
    except Exception as error:  # noqa: BLE001
        result.update(error=f"{type(error).__name__}: {error}", type=type(error).__name__)
    _save(out, rank, "disagreement", result)

    # 5. Rank 1 dies without a word (os._exit) mid-run; rank 0 must notice and stop with a clear
    #    error within the (short) timeout instead of hanging. Must be last: the group is gone.
    started = time.perf_counter()
    result = {}
    try:
        run_scenario("wanda", fail_rank=1, fail_block=FAIL_BLOCK, hard=True)
        result["error"] = None
    except Exception as error:  # noqa: BLE001
        result.update(error=f"{type(error).__name__}: {error}", type=type(error).__name__,
                      is_runtime_error=isinstance(error, RuntimeError))
    result["seconds"] = time.perf_counter() - started
    _save(out, rank, "hard_failure", result)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the process group's peer is gone after the hard failure.
    os._exit(code)
