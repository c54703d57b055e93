"""One rank of test_recovery's data-parallel test (started with torchrun's environment variables):
recovers the pruned tiny Llama on its shard of the batches and saves its weights (and the layer
scores of prune_layers, computed on its shard and reduced) to OUT/rank<r>.pt; rank 0 writes
OUT/checkpoint.

Usage: python _recovery_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch

from prunekit import distributed
from test_recovery import batches, pruned_llama

from prunekit.recovery import recover
from prunekit.surgery.layers import score_layers

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    assert distributed.init_from_env(), "expected WORLD_SIZE > 1"
    try:
        model = pruned_llama()
        scores = score_layers(model, batches(), sublayers=True)
        report = recover(model, batches(), steps=4, lr=1e-3, progress=False, checkpoint=out / "checkpoint")
        torch.save({"weights": {n: p.detach() for n, p in model.named_parameters()},
                    "world_size": report.world_size, "scores": scores, "still_zero": report.pruned_weights_still_zero},
                   out / f"rank{distributed.get_rank()}.pt")
    finally:
        distributed.shutdown()
