"""Bad input to prune_structured that only the model can reveal: ValueErrors that name the
argument, the expected and the received value, raised before the model is touched."""

import pytest
import torch
import torch.nn as nn
from structured_cnn_models import cnn_calibration, tiny_cnn
from structured_hf_models import hf_calibration, hf_model

from prunekit import PruneConfig
from prunekit.surgery.structured import StructuredConfig, prune_structured


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
    (dict(sparsity={"heads": 0.9}), None, r"StructuredConfig.sparsity: expected a sparsity that keeps at least one "
                                          r"of the 4 key/value heads .* but got 0.9 which removes all of them"),
    (dict(sparsity={"channels": 0.1}), None, r"StructuredConfig.sparsity: expected keys among the targets "
                                             r"\('mlp', 'heads'\) of LlamaForCausalLM, but got 'channels'"),
    (dict(targets="channels"), None, r"StructuredConfig.targets: expected some of \('mlp', 'heads'\) for "
                                     r"LlamaForCausalLM, but got 'channels'"),
    (dict(round_to=256), None, r"StructuredConfig.round_to: expected at most the 128 channels of group .*, "
                               r"but got 256"),
    (dict(method="wanda"), None, r"calib: expected a non-empty list of calibration inputs for method='wanda', "
                                 r"but got None"),
    (dict(method="flap"), [], r"calib: expected a non-empty list .* but got an empty list"),
    (dict(bias_compensation=True), None, r"calib: expected .* for bias_compensation=True, but got None"),
    (dict(modules=["model.layers.0.input_layernorm"]), None,
     r"StructuredConfig.modules: expected names of modules in prunable .* but 'model.layers.0.input_layernorm' is "
     r"not prunable"),
    (dict(modules=["lm_head"]), None, r"StructuredConfig.modules: .* 'lm_head' is not prunable"),
    (dict(), [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}, 3.5], r"calib: expected every item .* but item 1 "
                                                                        r"is float"),
]


@pytest.mark.parametrize("fields, calib, message", HF_CASES, ids=[str(i) for i in range(len(HF_CASES))])
def test_bad_arguments_leave_the_model_unchanged(fields, calib, message):
    model = hf_model("llama")
    snapshot = _snapshot(model)
    fields = {"method": "magnitude", "sparsity": 0.25, **fields}
    with pytest.raises(ValueError, match=message):
        prune_structured(model, StructuredConfig(**fields), calib)
    _assert_unchanged(model, snapshot)


def test_taylor_without_a_loss_names_loss_fn():
    model = hf_model("bert")  # BertModel returns no loss
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=r"StructuredConfig.loss_fn: expected a callable\(model, batch\) -> scalar "
                                         r"loss for the 'taylor' importance, .* got None"):
        prune_structured(model, StructuredConfig(method="taylor", sparsity=0.25), hf_calibration())
    _assert_unchanged(model, snapshot)
    assert all(p.grad is None for p in model.parameters())


def test_cnn_needs_example_inputs():
    model = tiny_cnn("resnet")
    with pytest.raises(ValueError, match=r"StructuredConfig.example_inputs: expected a model input .* got None"):
        prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25))


def test_cnn_heads_target_and_unprunable_module():
    model = tiny_cnn("resnet")
    snapshot = _snapshot(model)
    x = cnn_calibration()[0]

    def config(**fields):
        return StructuredConfig(**{"method": "magnitude", "sparsity": 0.25, "example_inputs": x, **fields})

    with pytest.raises(ValueError, match=r"StructuredConfig.targets: expected some of \('channels',\) for TinyResNet, "
                                         r"but got 'heads'"):
        prune_structured(model, config(targets="heads"))
    with pytest.raises(ValueError, match=r"StructuredConfig.modules: .* 'fc' is not prunable: its output channels "
                                         r"cannot be pruned: it reaches the output of TinyResNet"):
        prune_structured(model, config(modules="fc"))
    with pytest.raises(ValueError, match=r"StructuredConfig.sparsity: expected a sparsity that keeps at least one of "
                                         r"the 16 channels"):
        prune_structured(model, config(sparsity=0.99))
    with pytest.raises(ValueError, match=r"StructuredConfig.round_to: expected at most the 16 channels"):
        prune_structured(model, config(round_to=64))
    _assert_unchanged(model, snapshot)


def test_model_without_prunable_groups():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=r"model: expected Sequential to have prunable channel groups .* but found "
                                         r"none \(0: it is read by LayerNorm"):
        prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25, example_inputs=torch.randn(2, 8)))
    _assert_unchanged(model, snapshot)


def test_model_and_config_of_the_wrong_type():
    with pytest.raises(ValueError, match=r"model: expected a torch.nn.Module, but got dict"):
        prune_structured({}, StructuredConfig(method="magnitude"))
    with pytest.raises(ValueError, match=r"config: expected a prunekit.StructuredConfig \(or None for the defaults\), "
                                         r"but got PruneConfig"):
        prune_structured(tiny_cnn("resnet"), PruneConfig())
