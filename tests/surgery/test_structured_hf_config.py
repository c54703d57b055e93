"""Hugging Face config updates (prunekit.surgery.structured.hf_config): the new widths and head
counts are written where the config can hold them, save_pretrained/from_pretrained round-trips,
and where the config cannot describe the pruned model the report says so and warns."""

import pytest
import torch
from structured_hf_models import ARCHITECTURES, LLAMA_FAMILY, hf_calibration, hf_model, hf_output, masked_reference

from prunekit.surgery.structured import StructuredConfig, count_parameters, prune_structured


def _magnitude(sparsity, **fields) -> StructuredConfig:
    return StructuredConfig(method="magnitude", sparsity=sparsity, **fields)


def _reload(model, path):
    model.save_pretrained(path)
    reloaded = type(model).from_pretrained(path).eval()
    reloaded.config._attn_implementation = "eager"
    return reloaded


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_pretrained_round_trip(arch, tmp_path):
    model = hf_model(arch)
    if arch in LLAMA_FAMILY:  # LlamaConfig (transformers 5) insists on hidden_size % heads == 0: 8 -> 4 heads
        sparsity = {"mlp": 0.25, "heads": 0.5 if arch == "llama" else 0.25}
    else:  # OPT/GPT-2/BERT derive head_dim from hidden_size / heads: only the MLP is expressible
        sparsity = {"mlp": 0.25}
    report = prune_structured(model, _magnitude(sparsity, targets=tuple(sparsity)))
    assert report.config_reloadable is True
    reloaded = _reload(model, tmp_path)
    batch = hf_calibration(batches=1)[0]
    assert torch.equal(hf_output(reloaded, batch), hf_output(model, batch))
    assert count_parameters(reloaded) == count_parameters(model)


@pytest.mark.parametrize("arch", ["opt", "gpt2", "bert"])
def test_heads_not_expressible_in_config_warns(arch):
    model = hf_model(arch)
    with pytest.warns(UserWarning, match="does not describe the pruned model"):
        report = prune_structured(model, _magnitude(0.25, targets="heads"))
    assert report.config_reloadable is False
    assert report.config_updates["num_attention_heads"] == [4, 3]
    batch = hf_calibration(batches=1)[0]  # the model itself runs with 3 heads, computing what it should
    torch.testing.assert_close(hf_output(model, batch), hf_output(masked_reference(hf_model(arch), report), batch),
                               rtol=1e-5, atol=1e-5)


def test_llama_flap_biases_saved_through_config_switches(tmp_path):
    """FLAP's compensation creates biases on down_proj and o_proj; Llama's config can express them
    (mlp_bias, attention_bias), so the pruner turns the switches on, gives the sibling projections
    zero biases and the model still round-trips."""
    model = hf_model("llama")
    calib = hf_calibration()
    report = prune_structured(model, StructuredConfig(method="flap", sparsity={"mlp": 0.25, "heads": 0.5},
                                                      progress=False), calib)
    assert model.config.mlp_bias is True and model.config.attention_bias is True
    assert report.config_reloadable is True
    assert any(name.endswith("down_proj") for name in report.biases_created)
    assert torch.count_nonzero(model.model.layers[0].self_attn.q_proj.bias) == 0
    reloaded = _reload(model, tmp_path)
    assert torch.equal(hf_output(reloaded, calib[0]), hf_output(model, calib[0]))


def test_mistral_flap_biases_are_reported_unsaveable():
    model = hf_model("mistral")
    with pytest.warns(UserWarning, match="does not describe the pruned model"):
        report = prune_structured(model, StructuredConfig(method="flap", sparsity=0.25, progress=False),
                                  hf_calibration())
    assert report.config_reloadable is False and report.biases_created


def test_llama_head_count_rejected_by_its_config_warns():
    """transformers' LlamaConfig validates hidden_size % num_attention_heads == 0; 6 heads of 8 on a
    hidden size of 64 is a valid model that this config cannot describe: pruned anyway, warned."""
    model = hf_model("llama")
    with pytest.warns(UserWarning, match="not a multiple"):
        report = prune_structured(model, _magnitude(0.25))
    assert report.config_reloadable is False
    assert model.config.num_attention_heads == 6
    batch = hf_calibration(batches=1)[0]
    torch.testing.assert_close(hf_output(model, batch), hf_output(masked_reference(hf_model("llama"), report), batch),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("round_to, expected", [(None, 90), (16, 96), (64, 64)])
def test_round_to_mlp_width(round_to, expected):
    model = hf_model("qwen2")
    report = prune_structured(model, _magnitude({"mlp": 0.3}, targets="mlp", round_to=round_to))  # 128 * 0.7 = 89.6
    assert model.config.intermediate_size == expected
    assert all(layer.mlp.up_proj.out_features == expected for layer in model.model.layers)
    assert report.config_reloadable is True


def test_widths_differing_between_blocks_leave_the_config():
    model = hf_model("llama")
    with pytest.warns(UserWarning) as caught:
        report = prune_structured(model, _magnitude(0.5, ignore=["model.layers.1.*"]))
    messages = [str(w.message) for w in caught]
    assert any("differ between blocks" in m for m in messages) and any("does not describe" in m for m in messages)
    assert {g["name"].split(".")[2] for g in report.groups} == {"0"}
    # one config width cannot describe both blocks: not updated, and the report says it will not reload
    assert report.config_reloadable is False and "intermediate_size" not in report.config_updates
    assert model.config.intermediate_size == 128 and model.model.layers[0].mlp.up_proj.out_features == 64
