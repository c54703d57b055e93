"""Structured pruning of a ResNet-style and a MobileNetV2-style CNN: channel groups found by
dependency tracking on the traced graph (BatchNorm, residual adds, downsample convolutions,
depthwise convolutions, the classifier behind global pooling)."""

import json

import pytest
import torch
import torch.nn as nn
from structured_cnn_models import TinyMobileNet, TinyResNet, cnn_calibration, tiny_cnn

from prunekit.surgery.structured import count_parameters, find_channel_groups, prune_structured

KINDS = ["resnet", "mobilenet"]


def _output(model, x):
    with torch.no_grad():
        return model(x)


def _loss(model, batch):
    return model(*batch.args).square().mean()


def _pruned_reference(kind: str) -> nn.Module:
    """The architecture 25% channel pruning must produce, built directly."""
    if kind == "resnet":
        return TinyResNet(widths=(12, 24), inner=(12, 24))
    return TinyMobileNet(stem=12, outs=(12, 18, 18), hidden=(48, 48, 72), head=48)


def _conv_widths(model):
    return [(name, m.in_channels, m.out_channels, m.groups) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d)]


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


@pytest.mark.parametrize("kind", KINDS)
def test_zero_ratio_is_exact(kind):
    model = tiny_cnn(kind)
    x = cnn_calibration()[0]
    before = _output(model, x)
    report = prune_structured(model, 0.0, example_inputs=x)
    assert torch.equal(_output(model, x), before)
    assert report.params_before == report.params_after


@pytest.mark.parametrize("kind", KINDS)
def test_quarter_gives_the_expected_architecture(kind):
    model = tiny_cnn(kind)
    calib = cnn_calibration()
    report = prune_structured(model, 0.25, example_inputs=calib[0])
    reference = _pruned_reference(kind)
    assert report.params_after == count_parameters(model) == count_parameters(reference)
    assert report.params_before - report.params_after == count_parameters(tiny_cnn(kind)) - count_parameters(reference)
    assert _conv_widths(model) == _conv_widths(reference)
    out = _output(model, torch.randn(3, 3, 12, 12))  # another batch and image size
    assert out.shape == (3, 10) and bool(torch.isfinite(out).all())
    json.dumps(report.to_dict())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("importance", ["magnitude", "taylor", "wanda", "flap"])
def test_every_importance_shrinks_the_same_way(kind, importance):
    model = tiny_cnn(kind)
    calib = cnn_calibration()
    dense = _output(model, calib[0])
    report = prune_structured(model, 0.25, importance=importance, calib=calib, loss_fn=_loss)
    assert _conv_widths(model) == _conv_widths(_pruned_reference(kind))
    out = _output(model, calib[0])
    assert bool(torch.isfinite(out).all()) and not torch.equal(out, dense)
    created = sum(p.numel() for name, p in model.named_parameters()
                  if name.endswith("bias") and name.rsplit(".", 1)[0] in report.biases_created)
    assert report.params_after - created == count_parameters(_pruned_reference(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_flap_bias_compensation_reduces_error(kind):
    calib = cnn_calibration(batches=3)
    dense = tiny_cnn(kind)
    errors = {}
    for compensate in (False, True):
        model = tiny_cnn(kind)
        prune_structured(model, 0.25, importance="flap", calib=calib, bias_compensation=compensate)
        errors[compensate] = sum(float((_output(model, x) - _output(dense, x)).square().mean()) for x in calib)
    assert errors[True] < 0.7 * errors[False]


def test_round_to_keeps_multiples():
    model = tiny_cnn("resnet")
    report = prune_structured(model, 0.25, round_to=8, example_inputs=cnn_calibration()[0])
    widths = {g["name"]: (g["units_before"], g["units_after"]) for g in report.groups}
    assert widths["stem.0"] == (16, 16)  # 12 is not a multiple of 8; the nearest (half up) is 16
    assert widths["layers.1.0.downsample.0"] == (32, 24)
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert count_parameters(model) == count_parameters(TinyResNet(widths=(16, 24), inner=(16, 24)))


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
    dense = _output(model, x)
    prune_structured(model, 0.0, example_inputs=x)
    assert torch.equal(_output(model, x), dense)
    prune_structured(model, 0.5, example_inputs=x)
    assert model.conv1.out_channels == model.conv2.out_channels == model.fc.in_features == 4


def test_recorded_and_traced_graphs_agree():
    from prunekit.surgery.structured import _ChannelAnalysis, record_graph, trace_graph

    model = tiny_cnn("mobilenet")
    x = cnn_calibration()[0]
    modules = dict(model.named_modules())
    results = []
    for graph in (trace_graph(model, (x,)), record_graph(model, (x,))):
        groups, _ = _ChannelAnalysis(graph, modules, "m").run().groups()
        results.append(sorted((g.name, g.units, sorted(g.member_names())) for g in groups))
    assert results[0] == results[1] and len(results[0]) == 6


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
