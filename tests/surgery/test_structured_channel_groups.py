"""Channel-group analysis (prunekit.surgery.structured.channel_groups): the channels found to go
together in a ResNet-style and a MobileNetV2-style CNN (BatchNorm, residual adds, downsample and
depthwise convolutions, the classifier behind global pooling), and what blocks a group."""

import torch
import torch.nn as nn
from structured_cnn_models import cnn_calibration, tiny_cnn

from prunekit.surgery.structured import StructuredConfig, find_channel_groups, prune_structured


def test_resnet_groups():
    groups, blocked = find_channel_groups(tiny_cnn("resnet"), cnn_calibration()[0])
    by_name = {g.name: g for g in groups}
    stage1 = by_name["layers.1.0.downsample.0"]  # the residual stream of stage 2: three producers
    roles = {(m.name, m.role) for m in stage1.members}
    assert {("layers.1.0.conv2", "out"), ("layers.1.1.conv2", "out"), ("layers.1.0.downsample.0", "out"),
            ("layers.1.1.conv1", "in"), ("fc", "in"), ("layers.1.0.downsample.1", "through"),
            ("layers.1.0.bn2", "through"), ("layers.1.1.bn2", "through")} == roles
    assert {m.name for m in by_name["layers.0.0.conv1"].members} == {"layers.0.0.conv1", "layers.0.0.bn1",
                                                                     "layers.0.0.conv2"}
    assert len(groups) == 6 and "fc" in blocked and "output" in blocked["fc"]


def test_mobilenet_depthwise_propagates():
    groups, _ = find_channel_groups(tiny_cnn("mobilenet"), cnn_calibration()[0])
    expand = next(g for g in groups if g.name == "blocks.2.block.0")
    assert {(m.name, m.role) for m in expand.members} == {
        ("blocks.2.block.0", "out"), ("blocks.2.block.1", "through"), ("blocks.2.block.3", "through"),
        ("blocks.2.block.4", "through"), ("blocks.2.block.6", "in")}
    assert expand.units == 96


class _DataDependent(nn.Module):
    """Python control flow on tensor values and shapes: torch.fx cannot trace it, the recorder
    can (a reduction over the channels used for the decision blocks them; a shape does not)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        if float(x.mean()) > -10:
            x = x * 1.0
        y = torch.relu(self.bn(self.conv1(x)))
        if y.shape[-1] > 1:
            y = self.conv2(y)
        return self.fc(y.mean((2, 3)))


def test_recorded_graph_when_tracing_fails():
    model = _DataDependent().eval()
    x = torch.randn(2, 3, 8, 8)
    groups, _ = find_channel_groups(model, x)
    assert sorted((g.name, sorted(m.name for m in g.members)) for g in groups) == [
        ("conv1", ["bn", "conv1", "conv2"]), ("conv2", ["conv2", "fc"])]
    dense = model(x)
    prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.0, example_inputs=x))
    assert torch.equal(model(x), dense)
    prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.5, example_inputs=x))
    assert model.conv1.out_channels == model.conv2.out_channels == model.fc.in_features == 4


class _Blocked(nn.Module):
    """A LayerNorm over the channels, a concatenation and a transpose: nothing is prunable."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.b = nn.Linear(16, 8)
        self.c = nn.Linear(8, 8)
        self.d = nn.Linear(16, 4)

    def forward(self, x):
        y = self.b(self.norm(self.a(x)))
        z = torch.cat([self.c(x), y], dim=-1)
        return self.d(z)


def test_blocking_operations():
    groups, blocked = find_channel_groups(_Blocked(), torch.randn(2, 8))
    assert groups == []
    assert "LayerNorm" in blocked["a"] and "cat" in blocked["b"] and "cat" in blocked["c"]


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 8)
        self.c = nn.Linear(8, 16)
        self.d = nn.Linear(16, 8)
        self.tied = nn.Linear(8, 16)
        self.tied.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.d(torch.relu(self.c(x))), self.tied(x)


def test_tied_weights_are_not_pruned():
    groups, blocked = find_channel_groups(_Tied(), torch.randn(2, 8))
    assert [g.name for g in groups] == ["c"]
    assert "shared" in blocked["a"]
