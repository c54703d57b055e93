"""The model of tests/io/data/layout_v1.safetensors: one sparse module per format and kind."""

import torch
import torch.nn as nn


class LayoutModel(nn.Module):
    """Linear 2:4 (fp32), Linear unstructured (40 columns: a partial bitmap word), Linear dense,
    bf16 Linear unstructured, Conv2d 1x1 2:4, Conv2d 3x3 unstructured (padding 'same'), and a
    LayerNorm that stays an ordinary module."""

    def __init__(self):
        super().__init__()
        self.semi = nn.Linear(64, 32)
        self.bitmap = nn.Linear(40, 24, bias=False)
        self.dense = nn.Linear(24, 8)
        self.bf16 = nn.Linear(48, 16).to(torch.bfloat16)
        self.conv24 = nn.Conv2d(32, 32, 1)
        self.conv = nn.Conv2d(8, 16, 3, padding="same")
        self.norm = nn.LayerNorm(8)


FORMATS = {"semi": "2:4", "bitmap": "unstructured", "dense": "dense", "bf16": "unstructured",
           "conv24": "2:4", "conv": "unstructured"}


def layout_model() -> LayoutModel:
    """The dense model with pruned weights, the same on every call (seeded)."""
    torch.manual_seed(22)
    model = LayoutModel()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, fmt in FORMATS.items():
            weight = getattr(model, name).weight
            matrix = weight.reshape(weight.shape[0], -1)
            if fmt == "2:4":
                groups = torch.rand(matrix.shape[0], matrix.shape[1] // 4, 4, generator=generator)
                keep = groups.argsort(-1).argsort(-1) < 2
                matrix.mul_(keep.reshape(matrix.shape).to(matrix.dtype))
            else:
                matrix.mul_((torch.rand(matrix.shape, generator=generator) >= 0.6).to(matrix.dtype))
        model.norm.weight.normal_(generator=generator)
    return model.eval()
