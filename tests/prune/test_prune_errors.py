"""Bad input: clear ValueErrors naming the cause, and the model untouched."""

import math
import warnings

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit import PruneConfig

from tiny_models import calibration, tiny_model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="obs"), "PruneConfig.method: expected one of .*'obs'"),
    (dict(sparsity=1.0), "PruneConfig.sparsity: expected a number in \\[0, 1\\), but got 1.0"),
    (dict(sparsity=-0.2), "PruneConfig.sparsity"),
    (dict(sparsity=math.nan), "PruneConfig.sparsity"),
    (dict(sparsity="3:2"), "PruneConfig.sparsity: expected a fraction in \\[0, 1\\) or 'n:m'"),
    (dict(allocation="layerwise"), "PruneConfig.allocation"),
    (dict(refine="obc"), "PruneConfig.refine"),
    (dict(sparsity="2:4", allocation="owl"), "needs an unstructured sparsity"),
    (dict(method="sparsegpt", refine="dsnot"), "cannot be combined with dsnot"),
    (dict(nsamples=0), "nsamples"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kwargs)


@pytest.mark.parametrize("calib,match", [
    ([], "calib is empty"),
    (iter([]), "calib is empty"),
    (None, "calib is None, but method='wanda'"),
    ([{"attention_mask": torch.ones(1, 4, dtype=torch.long)}], "item 0 does not fit .*input_ids"),
    ([torch.zeros(2, 4)], "item 0 does not fit"),  # float ids into an embedding
    ([3], "item 0 is int"),
])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gblm"])
def test_bad_calibration_leaves_the_model_unchanged(calib, match, method):
    model = tiny_model("llama")
    before = snapshot(model)
    if calib is None:
        match = match.replace("wanda", method)
    with pytest.raises(ValueError, match=match):
        prunekit.prune(model, PruneConfig(method=method, progress=False), calib)
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_nan_activations_are_reported_before_pruning():
    model = tiny_model("llama")
    before = snapshot(model)
    with torch.no_grad():
        model.model.embed_tokens.weight[5, 0] = float("nan")
    before = snapshot(model)
    ids = torch.full((1, 8), 5)
    with pytest.raises(ValueError, match="NaN or Inf activations at the input of model.layers\\[0\\]"):
        prunekit.prune(model, PruneConfig(method="wanda", progress=False), [ids])
    after = model.state_dict()
    assert all(torch.equal(after[k].nan_to_num(), v.nan_to_num()) for k, v in before.items())


def test_nan_inside_the_model_names_the_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias[3] = float("nan")
    with pytest.raises(ValueError, match="input of layer 2 holds NaN"):
        prunekit.prune(model, PruneConfig(method="wanda", progress=False), [torch.randn(3, 4)])


def test_ignore_pattern_matching_nothing_warns():
    model = tiny_model("opt")
    with pytest.warns(UserWarning, match="pattern 'decoder.layers.9.\\*' matches no prunable layer"):
        prunekit.prune(model, PruneConfig(method="magnitude", ignore=["decoder.layers.9.*", "lm_head"],
                                          progress=False), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prunekit.prune(tiny_model("opt"), PruneConfig(method="magnitude", ignore=["lm_head", "*.q_proj"],
                                                      progress=False), None)


def test_model_without_prunable_layers():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="has no prunable layers"):
        prunekit.prune(model, PruneConfig(method="magnitude", progress=False), None)
    with pytest.raises(ValueError, match="no prunable layers left after ignore"):
        prunekit.prune(nn.Sequential(nn.Linear(4, 4)), PruneConfig(method="magnitude", ignore=["0"],
                                                                     progress=False), None)


def test_nm_pattern_with_indivisible_layer_names_it():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    before = snapshot(model)
    with pytest.raises(ValueError, match="2 \\(6\\)"):
        prunekit.prune(model, PruneConfig(method="magnitude", sparsity="2:4", progress=False), None)
    assert_unchanged(model, before)


def test_bad_model_and_config_types():
    with pytest.raises(ValueError, match="config must be a prunekit.PruneConfig"):
        prunekit.prune(nn.Linear(4, 4), {"method": "wanda"}, None)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        prunekit.prune("model", PruneConfig(), None)


def test_gblm_without_a_loss_asks_for_one():
    model = tiny_model("bert")
    before = snapshot(model)
    with pytest.raises(ValueError, match="gblm: BertModel returned no loss .*PruneConfig\\(loss_fn="):
        prunekit.prune(model, PruneConfig(method="gblm", progress=False), calibration("bert"))
    assert_unchanged(model, before)
    # with a loss function it works
    report = prunekit.prune(model, PruneConfig(method="gblm", progress=False, loss_fn=lambda m, batch: m(
        **batch.kwargs).last_hidden_state.square().mean()), calibration("bert"))
    assert report.total_sparsity == pytest.approx(0.5)
