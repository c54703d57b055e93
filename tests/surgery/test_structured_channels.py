"""Channel surgery on single modules (prunekit.surgery.structured.channels): the cut module computes
exactly the kept slice of the original, and bad indices or modules are named."""

import pytest
import torch
import torch.nn as nn

from prunekit.surgery.structured import add_to_bias, prune_input_channels, prune_output_channels, prune_through_channels


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
    assert add_to_bias(linear, torch.ones(4)) is False and torch.equal(linear.bias, torch.full((4,), 2.0))
    with pytest.raises(ValueError, match=r"delta: expected shape \(4,\) for Linear, but got \(3,\)"):
        add_to_bias(linear, torch.ones(3))
