"""Structured pruning of tiny Hugging Face models: exactness at 0%, the expected parameter drop at
25%, grouped-query head layouts, config updates and save_pretrained/from_pretrained round trips."""

import json
import warnings

import pytest
import torch
from structured_hf_models import ARCHITECTURES, HIDDEN, LLAMA_FAMILY, hf_calibration, hf_model, hf_output

from prunekit.surgery.structured import count_parameters, prune_structured


def _removed_at_25(arch: str) -> dict:
    """Parameters that 25% of MLP channels and 25% of key/value heads remove, from the configs of
    hf_models (independent of the pruner): per target, summed over the two blocks."""
    h = HIDDEN
    if arch in LLAMA_FAMILY:  # intermediate 128 -> 96 over gate, up (rows) and down (columns), no biases
        mlp = 32 * h * 3
        # one of 4 kv heads (head_dim 8) with its 2 query heads: q 16 rows, k 8, v 8, o 16 columns
        heads = (16 + 8 + 8 + 16) * h + (16 + 8 + 8 if arch == "qwen2" else 0)  # qwen2: q/k/v biases
    elif arch in ("opt", "bert"):  # ffn 128 -> 96 (fc1 rows + bias, fc2 columns); 1 of 4 heads of 16
        mlp = 32 * (h + 1) + 32 * h
        heads = 3 * 16 * (h + 1) + 16 * h
    else:  # gpt2: n_inner 4 * 64 = 256 -> 192; fused c_attn: 3 x 16 columns + biases; c_proj 16 rows
        mlp = 64 * (h + 1) + 64 * h
        heads = 3 * 16 * (h + 1) + 16 * h
    return {"mlp": 2 * mlp, "heads": 2 * heads}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zero_ratio_is_exact(arch):
    model = hf_model(arch)
    batch = hf_calibration(batches=1)[0]
    before = hf_output(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_structured(model, 0.0)
    assert torch.equal(hf_output(model, batch), before)
    assert report.params_before == report.params_after == count_parameters(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert report.config_updates == {}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_quarter_removes_expected_parameters_and_runs(arch):
    model = hf_model(arch)
    batch = hf_calibration(batches=1)[0]
    dense = hf_output(model, batch)
    expected = _removed_at_25(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OPT/GPT-2/BERT: heads not expressible in their configs
        report = prune_structured(model, 0.25)
    assert report.params_before - report.params_after == expected["mlp"] + expected["heads"]
    assert report.params_after == count_parameters(model)
    out = hf_output(model, batch)
    assert out.shape == dense.shape and bool(torch.isfinite(out).all())
    assert not torch.equal(out, dense)
    kinds = sorted({g["kind"] for g in report.groups})
    assert kinds == ["heads", "mlp"] and len(report.groups) == 4
    json.dumps(report.to_dict())  # JSON-serialisable


@pytest.mark.parametrize("target", ["mlp", "heads"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_single_target_removes_its_share(arch, target):
    model = hf_model(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = prune_structured(model, 0.25, targets=target)
    assert report.params_removed == _removed_at_25(arch)[target]
    assert {g["kind"] for g in report.groups} == {target}


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
def test_gqa_layout_stays_valid(arch):
    model = hf_model(arch)
    report = prune_structured(model, {"heads": 0.5, "mlp": 0.25})
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 8)
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert config.intermediate_size == 96
    for layer in model.model.layers:
        attention = layer.self_attn
        assert attention.q_proj.weight.shape == (4 * 8, HIDDEN)
        assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (2 * 8, HIDDEN)
        assert attention.o_proj.weight.shape == (HIDDEN, 4 * 8)
        assert attention.num_key_value_groups == 2 and attention.head_dim == 8
    # key/value head u keeps its own query heads 2u, 2u + 1: the kept query rows follow the kv choice
    for group in report.groups:
        if group["kind"] == "heads":
            assert group["units_before"] == 4 and group["units_after"] == 2
    out = hf_output(model, hf_calibration(batches=1)[0])
    assert bool(torch.isfinite(out).all())


def test_gqa_query_rows_follow_their_kv_head():
    """Removing kv head u must remove exactly query heads 2u and 2u + 1 (their rows in q_proj)."""
    model = hf_model("llama")
    attention = model.model.layers[0].self_attn
    q_before = attention.q_proj.weight.detach().clone()
    k_before = attention.k_proj.weight.detach().clone()
    with torch.no_grad():  # make kv head 1 and its query heads 2, 3 the weakest
        for proj, rows in ((attention.q_proj, slice(16, 32)), (attention.k_proj, slice(8, 16)),
                           (attention.v_proj, slice(8, 16)), (attention.o_proj, None)):
            if rows is None:
                proj.weight[:, 16:32] *= 1e-3
            else:
                proj.weight[rows] *= 1e-3
    q_scaled = attention.q_proj.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 6 heads: LlamaConfig cannot describe it (tested below)
        prune_structured(model, {"heads": 0.25, "mlp": 0.0})
    assert torch.equal(attention.q_proj.weight, torch.cat([q_scaled[:16], q_scaled[32:]]))
    assert torch.equal(attention.k_proj.weight, torch.cat([k_before[:8], k_before[16:]]))
    assert not torch.equal(q_before[:16], q_scaled[16:32])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_pretrained_round_trip(arch, tmp_path):
    model = hf_model(arch)
    if arch in LLAMA_FAMILY:  # LlamaConfig (transformers 5) insists on hidden_size % heads == 0: 8 -> 4 heads
        ratio = {"mlp": 0.25, "heads": 0.5 if arch == "llama" else 0.25}
    else:  # OPT/GPT-2/BERT derive head_dim from hidden_size / heads: only the MLP is expressible
        ratio = {"mlp": 0.25}
    report = prune_structured(model, ratio, targets=tuple(ratio))
    assert report.config_reloadable is True
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    reloaded.config._attn_implementation = "eager"
    batch = hf_calibration(batches=1)[0]
    assert torch.equal(hf_output(reloaded, batch), hf_output(model, batch))
    assert count_parameters(reloaded) == count_parameters(model)


@pytest.mark.parametrize("arch", ["opt", "gpt2", "bert"])
def test_heads_not_expressible_in_config_warns(arch):
    model = hf_model(arch)
    with pytest.warns(UserWarning, match="does not describe the pruned model"):
        report = prune_structured(model, 0.25, targets="heads")
    assert report.config_reloadable is False
    assert report.config_updates["num_attention_heads"] == [4, 3]
    out = hf_output(model, hf_calibration(batches=1)[0])  # the model itself runs with 3 heads
    assert bool(torch.isfinite(out).all())


def test_llama_flap_biases_saved_through_config_switches(tmp_path):
    """FLAP's compensation creates biases on down_proj and o_proj; Llama's config can express them
    (mlp_bias, attention_bias), so the pruner turns the switches on, gives the sibling projections
    zero biases and the model still round-trips."""
    model = hf_model("llama")
    calib = hf_calibration()
    report = prune_structured(model, {"mlp": 0.25, "heads": 0.5}, importance="flap", calib=calib)
    assert model.config.mlp_bias is True and model.config.attention_bias is True
    assert report.config_reloadable is True
    assert any(name.endswith("down_proj") for name in report.biases_created)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    reloaded.config._attn_implementation = "eager"
    assert torch.equal(hf_output(reloaded, calib[0]), hf_output(model, calib[0]))


def test_mistral_flap_biases_are_reported_unsaveable():
    model = hf_model("mistral")
    with pytest.warns(UserWarning, match="does not describe the pruned model"):
        report = prune_structured(model, 0.25, importance="flap", calib=hf_calibration())
    assert report.config_reloadable is False and report.biases_created


def test_llama_head_count_rejected_by_its_config_warns():
    """transformers' LlamaConfig validates hidden_size % num_attention_heads == 0; 6 heads of 8 on a
    hidden size of 64 is a valid model that this config cannot describe: pruned anyway, warned."""
    model = hf_model("llama")
    with pytest.warns(UserWarning, match="not a multiple"):
        report = prune_structured(model, 0.25)
    assert report.config_reloadable is False
    assert model.config.num_attention_heads == 6
    assert bool(torch.isfinite(hf_output(model, hf_calibration(batches=1)[0])).all())


@pytest.mark.parametrize("round_to, expected", [(None, 90), (16, 96), (64, 64)])
def test_round_to_mlp_width(round_to, expected):
    model = hf_model("qwen2")
    report = prune_structured(model, {"mlp": 0.3}, targets="mlp", round_to=round_to)  # 128 * 0.7 = 89.6
    assert model.config.intermediate_size == expected
    assert all(layer.mlp.up_proj.out_features == expected for layer in model.model.layers)
    assert report.config_reloadable is True


def test_query_head_unit_keeps_kv_heads_and_prunes_within_groups(tmp_path):
    model = hf_model("llama")
    weak = [1, 2, 4, 7]  # one query head in each of the 4 key/value groups {0,1} {2,3} {4,5} {6,7}
    with torch.no_grad():
        for layer in model.model.layers:
            for head in weak:
                layer.self_attn.q_proj.weight[head * 8:(head + 1) * 8] *= 1e-3
                layer.self_attn.o_proj.weight[:, head * 8:(head + 1) * 8] *= 1e-3
    q_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    k_before = model.model.layers[0].self_attn.k_proj.weight.detach().clone()
    report = prune_structured(model, {"heads": 0.5}, targets="heads", head_unit="query_head")
    assert report.params_removed == 2 * (4 * 8 * HIDDEN * 2)  # 4 query heads: q rows and o columns
    attention = model.model.layers[0].self_attn
    kept = [0, 3, 5, 6]
    assert torch.equal(attention.q_proj.weight, torch.cat([q_before[h * 8:(h + 1) * 8] for h in kept]))
    assert torch.equal(attention.k_proj.weight, k_before)
    assert attention.num_key_value_groups == 1
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 4)
    assert report.config_reloadable is True
    batch = hf_calibration(batches=1)[0]
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    reloaded.config._attn_implementation = "eager"
    assert torch.equal(hf_output(reloaded, batch), hf_output(model, batch))


def test_query_head_unit_errors():
    with pytest.raises(ValueError, match=r"head_unit: expected 'kv_group' for OPTForCausalLM, .* but got 'query_head'"):
        prune_structured(hf_model("opt"), 0.25, head_unit="query_head")
    with pytest.raises(ValueError, match=r"head_unit: expected one of \('kv_group', 'query_head'\), but got 'heads'"):
        prune_structured(hf_model("llama"), 0.25, head_unit="heads")
    model = hf_model("qwen2")
    with pytest.raises(ValueError, match=r"ratio: expected a ratio that keeps at least one of the 2 query heads of "
                                         r"every key/value head .* but got 0.9"):
        prune_structured(model, {"heads": 0.9}, targets="heads", head_unit="query_head")
