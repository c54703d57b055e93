"""The pruning runs the distributed tests compare: the same tiny HF model, calibration items and
configs in the single-process reference (the test process) and in every rank (_worker.py)."""

import os

import torch

import prunekit
from prunekit import PruneConfig

from tiny_models import calibration, tiny_model

FAIL_BLOCK = 1  # the block whose statistics pass the failure scenarios break on rank 1

RUNS = {
    "sparsegpt": dict(method="sparsegpt", sparsity=0.5),
    "sparsegpt_24": dict(method="sparsegpt", sparsity="2:4"),
    "wanda": dict(method="wanda", sparsity=0.5),
    "wanda_owl_oneshot": dict(method="wanda", sparsity=0.6, allocation="owl", sequential=False),
    "gblm": dict(method="gblm", sparsity=0.5),
    "wanda_dsnot": dict(method="wanda", sparsity=0.6, refine="dsnot"),
    "random": dict(method="random", sparsity=0.5),  # replicated on every rank (one generator in layer order)
}


def calib() -> list:
    """5 items (an uneven split over 2 ranks), one of them padded: the ranks see different token
    counts, so their statistics must be combined with the counts."""
    items = calibration("llama", batches=5, batch_size=2, seq=16)
    items[0]["attention_mask"][1, 9:] = 0
    return items


def run_scenario(name: str, *, fail_rank: int | None = None, fail_block: int = FAIL_BLOCK, hard: bool = False,
                 distributed: bool | None = None, other_model_rank: int | None = None):
    """Prunes a fresh tiny Llama under RUNS[name]; returns (model, report). ``fail_rank`` makes that
    rank raise (or, ``hard``, exit at once) in the forward of block ``fail_block``'s MLP;
    ``other_model_rank`` gives that rank a model with other weights."""
    model = tiny_model("llama", seed=1 if prunekit.distributed.get_rank() == other_model_rank else 0)
    if fail_rank is not None and prunekit.distributed.get_rank() == fail_rank:
        def hook(module, args, output):
            if hard:
                os._exit(3)
            raise RuntimeError("injected failure in the MLP forward")
        model.model.layers[fail_block].mlp.register_forward_hook(hook)
    # A distributed run keeps ATen's GEMMs (PruneConfig.linear_backend): the reference does too.
    config = PruneConfig(**RUNS[name], progress=False, distributed=distributed, linear_backend="aten")
    report = prunekit.prune(model, config, calib())
    return model, report


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2}
