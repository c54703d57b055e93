"""Bad input to structured pruning: ValueErrors that name the argument, the expected and the
received value, raised before the model is touched."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from structured_cnn_models import cnn_calibration, tiny_cnn
from structured_hf_models import hf_calibration, hf_model

from prunekit.surgery.structured import (add_to_bias, prune_input_channels, prune_output_channels, prune_structured,
                                         prune_through_channels)


def _snapshot(model):
    config = model.config.to_dict() if hasattr(model, "config") else None
    return {k: v.clone() for k, v in model.state_dict().items()}, config, repr(model)


def _assert_unchanged(model, snapshot):
    state, config, text = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())
    assert repr(model) == text
    if config is not None:
        assert model.config.to_dict() == config


HF_CASES = [
    (dict(ratio=1.0), r"ratio: expected a fraction in \[0, 1\) .* but got 1.0"),
    (dict(ratio=-0.1), r"ratio: expected a fraction in \[0, 1\) .* but got -0.1"),
    (dict(ratio=float("nan")), r"ratio: expected a fraction .* but got nan"),
    (dict(ratio="0.5"), r"ratio: expected a fraction .* but got '0.5'"),
    (dict(ratio={"mlp": 0.2, "attention": 0.1}), r"ratio: expected keys among the targets .* but got 'attention'"),
    (dict(ratio={"heads": 0.9}), r"ratio: expected a ratio that keeps at least one of the 4 key/value heads .* "
                                 r"but got 0.9 which removes all of them"),
    (dict(importance="l1"), r"importance: expected one of \('magnitude', 'taylor', 'wanda', 'flap'\), but got 'l1'"),
    (dict(targets="channels"), r"targets: expected some of \('mlp', 'heads'\) .* but got 'channels'"),
    (dict(targets=()), r"targets: expected at least one of"),
    (dict(round_to=0), r"round_to: expected None or a positive int .* but got 0"),
    (dict(round_to=2.5), r"round_to: expected None or a positive int .* but got 2.5"),
    (dict(round_to=256), r"round_to: expected at most the 128 channels of group .*, but got 256"),
    (dict(importance="wanda"), r"calib: expected a non-empty list of calibration inputs for importance='wanda', "
                               r"but got None"),
    (dict(importance="flap", calib=[]), r"calib: expected a non-empty list .* but got an empty list"),
    (dict(bias_compensation=True), r"calib: expected .* for bias_compensation=True, but got None"),
    (dict(modules=["model.layers.0.input_layernorm"]), r"modules: expected names of modules in prunable .* but "
                                                       r"'model.layers.0.input_layernorm' is not prunable"),
    (dict(modules=["lm_head"]), r"modules: .* 'lm_head' is not prunable"),
    (dict(calib=[{"input_ids": torch.zeros(1, 4, dtype=torch.long)}, 3.5]), r"calib: expected every item .* but "
                                                                            r"item 1 is float"),
]


@pytest.mark.parametrize("kwargs, message", HF_CASES, ids=[str(i) for i in range(len(HF_CASES))])
def test_bad_arguments_leave_the_model_unchanged(kwargs, message):
    model = hf_model("llama")
    snapshot = _snapshot(model)
    kwargs = dict(kwargs)
    ratio = kwargs.pop("ratio", 0.25)
    with pytest.raises(ValueError, match=message):
        prune_structured(model, ratio, **kwargs)
    _assert_unchanged(model, snapshot)


def test_taylor_without_a_loss_names_loss_fn():
    model = hf_model("bert")  # BertModel returns no loss
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=r"loss_fn: expected a callable\(model, batch\) -> scalar loss .* got None"):
        prune_structured(model, 0.25, importance="taylor", calib=hf_calibration())
    _assert_unchanged(model, snapshot)
    assert all(p.grad is None for p in model.parameters())


def test_cnn_needs_example_inputs():
    model = tiny_cnn("resnet")
    with pytest.raises(ValueError, match=r"example_inputs: expected a model input .* got None"):
        prune_structured(model, 0.25)


def test_cnn_heads_target_and_unprunable_module():
    model = tiny_cnn("resnet")
    snapshot = _snapshot(model)
    x = cnn_calibration()[0]
    with pytest.raises(ValueError, match=r"targets: expected some of \('channels',\) for TinyResNet, but got 'heads'"):
        prune_structured(model, 0.25, targets="heads", example_inputs=x)
    with pytest.raises(ValueError, match=r"modules: .* 'fc' is not prunable: its output channels cannot be pruned: "
                                         r"it reaches the output of TinyResNet"):
        prune_structured(model, 0.25, modules="fc", example_inputs=x)
    with pytest.raises(ValueError, match=r"ratio: expected a ratio that keeps at least one of the 16 channels"):
        prune_structured(model, 0.99, example_inputs=x)
    with pytest.raises(ValueError, match=r"round_to: expected at most the 16 channels"):
        prune_structured(model, 0.25, round_to=64, example_inputs=x)
    _assert_unchanged(model, snapshot)


def test_model_without_prunable_groups():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=r"model: expected Sequential to have prunable channel groups .* but found "
                                         r"none \(0: it is read by LayerNorm"):
        prune_structured(model, 0.25, example_inputs=torch.randn(2, 8))
    _assert_unchanged(model, snapshot)


def test_modules_restricts_pruning():
    model = tiny_cnn("resnet")
    report = prune_structured(model, 0.5, modules=["layers.0.1.conv1"], example_inputs=cnn_calibration()[0])
    assert [g["name"] for g in report.groups] == ["layers.0.1.conv1"]
    assert model.layers[0][1].conv1.out_channels == 8 and model.layers[0][0].conv1.out_channels == 16


def test_ignore_skips_groups():
    model = hf_model("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prune_structured(model, 0.5, ignore=["model.layers.1.*"])
    assert {g["name"].split(".")[2] for g in report.groups} == {"0"}
    # one config width cannot describe both blocks: not updated, and the report says it will not reload
    assert any("differ between blocks" in str(w.message) for w in caught)
    assert report.config_reloadable is False and "intermediate_size" not in report.config_updates


def test_training_mode_and_batchnorm_statistics_survive():
    model = tiny_cnn("resnet").train()
    model.layers[0].eval()
    stem_mean = model.stem[1].running_mean.clone()
    prune_structured(model, 0.25, importance="wanda", calib=cnn_calibration(), modules="layers.0.1.conv1")
    assert torch.equal(model.stem[1].running_mean, stem_mean)  # untouched by tracing and calibration forwards
    assert model.layers[0][1].conv1.out_channels == 12
    assert model.training and model.stem.training and not model.layers[0].training


# ----------------------------------------------------------------------------- low-level surgery

def test_low_level_functions_match_slicing():
    torch.manual_seed(0)
    x = torch.randn(2, 6)
    linear = nn.Linear(6, 5)
    full = linear(x)
    keep = torch.tensor([0, 2, 4])
    prune_output_channels(linear, keep)
    torch.testing.assert_close(linear(x), full[:, keep])
    assert linear.out_features == 3 and linear.weight.shape == (3, 6)

    conv = nn.Conv2d(4, 3, 3, padding=1)
    image = torch.randn(1, 4, 5, 5)
    reference = nn.functional.conv2d(image[:, [1, 3]], conv.weight[:, [1, 3]], conv.bias, padding=1)
    prune_input_channels(conv, [1, 3])
    torch.testing.assert_close(conv(image[:, [1, 3]]), reference)
    assert conv.in_channels == 2

    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    full = bn(depthwise(image))
    prune_through_channels(depthwise, [0, 2])
    prune_through_channels(bn, [0, 2])
    torch.testing.assert_close(bn(depthwise(image[:, [0, 2]])), full[:, [0, 2]])
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == bn.num_features == 2


def test_hf_conv1d_surgery():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(5, 6)  # weight (in=6, out=5)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 6)
    full = layer(x)
    prune_output_channels(layer, [1, 3])
    torch.testing.assert_close(layer(x), full[:, [1, 3]])
    prune_input_channels(layer, [0, 1, 2, 5])
    assert layer.weight.shape == (4, 2) and layer.nf == 2


def test_low_level_errors():
    with pytest.raises(ValueError, match=r"module: expected nn.Linear, transformers Conv1D or nn.Conv2d \(groups=1\) "
                                         r"to prune output channels, but got LayerNorm"):
        prune_output_channels(nn.LayerNorm(4), [0])
    with pytest.raises(ValueError, match=r"module: expected .* but got Conv2d \(groups=2"):
        prune_input_channels(nn.Conv2d(4, 4, 1, groups=2), [0])
    with pytest.raises(ValueError, match=r"keep: expected at least one output channel to keep \(of 4\), but got none"):
        prune_output_channels(nn.Linear(3, 4), [])
    with pytest.raises(ValueError, match=r"keep: expected input channel indices in \[0, 3\), but got values in "
                                         r"\[1, 3\]"):
        prune_input_channels(nn.Linear(3, 4), [1, 3])
    with pytest.raises(ValueError, match=r"keep: expected strictly increasing"):
        prune_output_channels(nn.Linear(3, 4), [2, 1])
    linear = nn.Linear(3, 4, bias=False)
    assert add_to_bias(linear, torch.ones(4)) is True and torch.equal(linear.bias, torch.ones(4))
    with pytest.raises(ValueError, match=r"delta: expected shape \(4,\) for Linear, but got \(3,\)"):
        add_to_bias(linear, torch.ones(3))


def test_deepcopy_after_pruning_still_works():
    model = tiny_cnn("mobilenet")
    prune_structured(model, 0.25, example_inputs=cnn_calibration()[0])
    clone = copy.deepcopy(model)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
