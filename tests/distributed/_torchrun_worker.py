"""One rank under torchrun: joins with init_from_env(), prunes the small CNN with SparseGPT and
saves its weights and the environment it saw to OUT_DIR/rank<r>.pt.

Usage: torchrun --nproc-per-node 2 _torchrun_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch

from prunekit import distributed
from distributed_cnn import prune_small_cnn

if __name__ == "__main__":
    torch.set_num_threads(1)
    joined = distributed.init_from_env()
    try:
        model, report = prune_small_cnn()
        torch.save({"joined": joined, "rank": distributed.get_rank(), "world": distributed.get_world_size(),
                    "weights": {n: p.detach() for n, p in model.named_parameters() if p.dim() > 1},
                    "report": report.to_dict()}, Path(sys.argv[1]) / f"rank{distributed.get_rank()}.pt")
    finally:
        distributed.shutdown()
