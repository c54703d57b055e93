"""Small ResNet-style and MobileNetV2-style CNNs built locally (no downloads), for structured
pruning tests: residual adds across stages, downsample convolutions, BatchNorm, depthwise
convolutions, global pooling and a classifier."""

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or outputs
        self.conv1 = nn.Conv2d(inputs, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """Two stages of two basic blocks; ``inner`` sets the width inside the blocks (default: the
    stage width), so the architecture a structured pruner should produce can be built directly."""

    def __init__(self, widths=(16, 32), inner=None, classes: int = 10):
        super().__init__()
        inner = inner or widths
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, inputs = [], widths[0]
        for i, width in enumerate(widths):
            layers.append(nn.Sequential(BasicBlock(inputs, width, 1 if i == 0 else 2, inner[i]),
                                        BasicBlock(width, width, 1, inner[i])))
            inputs = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, hidden: int, residual: bool | None = None):
        super().__init__()
        self.use_residual = stride == 1 and inputs == outputs if residual is None else residual
        self.block = nn.Sequential(
            nn.Conv2d(inputs, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


class TinyMobileNet(nn.Module):
    """MobileNetV2-style: stem, three inverted residual blocks (expand 1x1, depthwise 3x3, project
    1x1; residual adds where shapes allow), a 1x1 head and a classifier. The widths are arguments
    so that the architecture a structured pruner should produce can be built directly."""

    def __init__(self, stem: int = 16, outs=(16, 24, 24), hidden=(64, 64, 96), head: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(stem, outs[0], 1, hidden[0], True),
                                    InvertedResidual(outs[0], outs[1], 2, hidden[1], False),
                                    InvertedResidual(outs[1], outs[2], 1, hidden[2], True))
        self.head = nn.Sequential(nn.Conv2d(outs[2], head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, classes))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def tiny_cnn(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyResNet() if kind == "resnet" else TinyMobileNet()
    return randomise_batchnorm(model, seed).eval()


def cnn_calibration(batches: int = 2, batch_size: int = 2, size: int = 8, seed: int = 1) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, size, size, generator=generator) for _ in range(batches)]
