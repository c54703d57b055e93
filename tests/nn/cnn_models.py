"""Two small CNNs built locally: a ResNet-style one (3x3 convs, BatchNorm, residual blocks with a
strided 1x1 projection) and a MobileNet-style one (depthwise 3x3 + pointwise 1x1, ReLU6)."""

import torch
import torch.nn as nn

CNN_ARCHITECTURES = ["resnet", "mobilenet"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetish(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = BasicBlock(32, 32, 1)
        self.layer2 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, channels, 1)
        self.act = nn.ReLU6()

    def forward(self, x):
        return x + self.project(self.act(self.depthwise(self.act(self.expand(x)))))


class MobileNetish(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(32, 2), InvertedResidual(32, 2))
        self.head = nn.Conv2d(32, 64, 1)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        x = nn.functional.relu6(self.head(self.blocks(self.stem(x))))
        return self.classifier(x.mean((2, 3)))


def cnn_model(arch: str, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {"resnet": ResNetish, "mobilenet": MobileNetish}[arch]().eval()
    if arch == "resnet":  # non-trivial BatchNorm statistics
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
    return model


def cnn_calibration(*, batches: int = 2, batch_size: int = 2, size: int = 16, seed: int = 1) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, size, size, generator=generator) for _ in range(batches)]
