"""A small CNN without a block list (prunekit calibrates it with whole-model forwards) and its
calibration images: the torchrun launch test, without the cost of importing transformers."""

import torch
import torch.nn as nn

from prunekit import PruneConfig, prune


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(5)]


def prune_small_cnn(distributed: bool | None = None):
    model = small_cnn()
    report = prune(model, PruneConfig(method="sparsegpt", sparsity=0.5, progress=False, distributed=distributed),
                   images())
    return model, report
