"""Attention heads as channel groups (prunekit.surgery.structured.attention): grouped-query layouts
stay valid, a key/value head takes its own query heads along, and single query heads can be the
unit instead."""

import pytest
import torch
from structured_hf_models import HIDDEN, LLAMA_FAMILY, hf_calibration, hf_model, hf_output, masked_reference

from prunekit.surgery.structured import StructuredConfig, prune_structured


def _magnitude(sparsity, **fields) -> StructuredConfig:
    return StructuredConfig(method="magnitude", sparsity=sparsity, **fields)


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
def test_gqa_layout_stays_valid(arch):
    model = hf_model(arch)
    report = prune_structured(model, _magnitude({"heads": 0.5, "mlp": 0.25}))
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
    for group in report.groups:
        if group["kind"] == "heads":
            assert group["units_before"] == 4 and group["units_after"] == 2
    batch = hf_calibration(batches=1)[0]
    torch.testing.assert_close(hf_output(model, batch), hf_output(masked_reference(hf_model(arch), report), batch),
                               rtol=1e-5, atol=1e-5)


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
    with pytest.warns(UserWarning, match="not a multiple"):  # 6 heads: LlamaConfig cannot describe it
        prune_structured(model, _magnitude({"heads": 0.25, "mlp": 0.0}))
    assert torch.equal(attention.q_proj.weight, torch.cat([q_scaled[:16], q_scaled[32:]]))
    assert torch.equal(attention.k_proj.weight, torch.cat([k_before[:8], k_before[16:]]))
    assert not torch.equal(q_before[:16], q_scaled[16:32])


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
    report = prune_structured(model, _magnitude({"heads": 0.5}, targets="heads", head_unit="query_head"))
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
    with pytest.raises(ValueError, match=r"StructuredConfig.head_unit: expected 'kv_group' for OPTForCausalLM, .* "
                                         r"but got 'query_head'"):
        prune_structured(hf_model("opt"), _magnitude(0.25, head_unit="query_head"))
    with pytest.raises(ValueError, match=r"StructuredConfig.head_unit: expected one of \('kv_group', 'query_head'\), "
                                         r"but got 'heads'"):
        _magnitude(0.25, head_unit="heads")
    model = hf_model("qwen2")
    with pytest.raises(ValueError, match=r"StructuredConfig.sparsity: expected a sparsity that keeps at least one of "
                                         r"the 2 query heads of every key/value head .* but got 0.9"):
        prune_structured(model, _magnitude({"heads": 0.9}, targets="heads", head_unit="query_head"))
