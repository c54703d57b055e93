"""The structured pruner on a ResNet-style and a MobileNetV2-style CNN: exact at 0%, the expected
architecture at 25% for every built-in importance, round_to, modules, modes and BatchNorm
statistics left alone."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from structured_cnn_models import TinyMobileNet, TinyResNet, cnn_calibration, tiny_cnn

from prunekit.surgery.structured import StructuredConfig, count_parameters, prune_structured

KINDS = ["resnet", "mobilenet"]
IMPORTANCES = ["magnitude", "taylor", "wanda", "flap"]


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


@pytest.mark.parametrize("kind", KINDS)
def test_zero_sparsity_is_exact(kind):
    model = tiny_cnn(kind)
    x = cnn_calibration()[0]
    before = _output(model, x)
    report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.0, example_inputs=x))
    assert torch.equal(_output(model, x), before)
    assert report.params_before == report.params_after


@pytest.mark.parametrize("kind", KINDS)
def test_quarter_gives_the_expected_architecture(kind):
    model = tiny_cnn(kind)
    calib = cnn_calibration()
    report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25, example_inputs=calib[0]))
    reference = _pruned_reference(kind)
    assert report.params_after == count_parameters(model) == count_parameters(reference)
    assert report.params_before - report.params_after == count_parameters(tiny_cnn(kind)) - count_parameters(reference)
    assert _conv_widths(model) == _conv_widths(reference)
    out = _output(model, torch.randn(3, 3, 12, 12))  # another batch and image size
    assert out.shape == (3, 10)
    assert json.loads(report.to_json())["params_removed"] == report.params_removed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", IMPORTANCES)
def test_every_importance_shrinks_the_same_way(kind, method):
    model = tiny_cnn(kind)
    calib = cnn_calibration()
    dense = _output(model, calib[0])
    report = prune_structured(model, StructuredConfig(method=method, sparsity=0.25, loss_fn=_loss, progress=False),
                              calib)
    assert report.method == method
    assert _conv_widths(model) == _conv_widths(_pruned_reference(kind))
    out = _output(model, calib[0])
    assert bool(torch.isfinite(out).all()) and not torch.equal(out, dense)
    created = sum(p.numel() for name, p in model.named_parameters()
                  if name.endswith("bias") and name.rsplit(".", 1)[0] in report.biases_created)
    assert report.params_after - created == count_parameters(_pruned_reference(kind))
    assert bool(report.biases_created) == (method == "flap")  # FLAP compensates by default, the others not


@pytest.mark.parametrize("kind", KINDS)
def test_flap_bias_compensation_reduces_error(kind):
    calib = cnn_calibration(batches=3)
    dense = tiny_cnn(kind)
    errors = {}
    for compensate in (False, True):
        model = tiny_cnn(kind)
        prune_structured(model, StructuredConfig(method="flap", sparsity=0.25, bias_compensation=compensate,
                                                 progress=False), calib)
        errors[compensate] = sum(float((_output(model, x) - _output(dense, x)).square().mean()) for x in calib)
    assert errors[True] < 0.7 * errors[False]


def test_round_to_keeps_multiples():
    model = tiny_cnn("resnet")
    report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25, round_to=8,
                                                      example_inputs=cnn_calibration()[0]))
    widths = {g["name"]: (g["units_before"], g["units_after"]) for g in report.groups}
    assert widths["stem.0"] == (16, 16)  # 12 is not a multiple of 8; the nearest (half up) is 16
    assert widths["layers.1.0.downsample.0"] == (32, 24)
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert count_parameters(model) == count_parameters(TinyResNet(widths=(16, 24), inner=(16, 24)))


def test_modules_restricts_pruning():
    model = tiny_cnn("resnet")
    report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.5, modules=["layers.0.1.conv1"],
                                                      example_inputs=cnn_calibration()[0]))
    assert [g["name"] for g in report.groups] == ["layers.0.1.conv1"]
    assert model.layers[0][1].conv1.out_channels == 8 and model.layers[0][0].conv1.out_channels == 16


def test_ignore_leaves_groups_alone():
    model = tiny_cnn("resnet")
    report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25, ignore="layers.1.*",
                                                      example_inputs=cnn_calibration()[0]))
    names = {g["name"] for g in report.groups}
    assert names and not any(name.startswith("layers.1.") for name in names)
    assert model.layers[1][0].conv1.out_channels == 32 and model.layers[0][0].conv1.out_channels == 12


def test_training_mode_and_batchnorm_statistics_survive():
    model = tiny_cnn("resnet").train()
    model.layers[0].eval()
    stem_mean = model.stem[1].running_mean.clone()
    prune_structured(model, StructuredConfig(method="wanda", sparsity=0.25, modules="layers.0.1.conv1", progress=False),
                     cnn_calibration())
    assert torch.equal(model.stem[1].running_mean, stem_mean)  # untouched by tracing and calibration forwards
    assert model.layers[0][1].conv1.out_channels == 12
    assert model.training and model.stem.training and not model.layers[0].training


def test_deepcopy_after_pruning_still_works():
    model = tiny_cnn("mobilenet")
    prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25, example_inputs=cnn_calibration()[0]))
    clone = copy.deepcopy(model)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
