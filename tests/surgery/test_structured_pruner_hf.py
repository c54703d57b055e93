"""The structured pruner on tiny Hugging Face models: exact at 0%, at 25% the expected parameter
drop and exactly the computation of the dense model without the removed units, and every built-in
importance through prune_structured(model, StructuredConfig(...), calib)."""

import warnings

import pytest
import torch
from structured_hf_models import (ARCHITECTURES, HIDDEN, LLAMA_FAMILY, hf_calibration, hf_model, hf_output,
                                  masked_reference)

from prunekit.surgery.structured import StructuredConfig, count_parameters, prune_structured


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
def test_zero_sparsity_is_exact(arch):
    model = hf_model(arch)
    batch = hf_calibration(batches=1)[0]
    before = hf_output(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.0))
    assert torch.equal(hf_output(model, batch), before)
    assert report.params_before == report.params_after == count_parameters(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert report.config_updates == {}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_quarter_removes_expected_parameters_and_units(arch):
    model = hf_model(arch)
    batch = hf_calibration(batches=1)[0]
    dense = hf_output(model, batch)
    expected = _removed_at_25(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OPT/GPT-2/BERT: heads not expressible in their configs
        report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25))
    assert report.params_before - report.params_after == expected["mlp"] + expected["heads"]
    assert report.params_after == count_parameters(model)
    kinds = sorted({g["kind"] for g in report.groups})
    assert kinds == ["heads", "mlp"] and len(report.groups) == 4
    out = hf_output(model, batch)
    assert not torch.equal(out, dense)
    # the pruned model computes what the dense one computes without the removed channels and heads
    torch.testing.assert_close(out, hf_output(masked_reference(hf_model(arch), report), batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["mlp", "heads"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_single_target_removes_its_share(arch, target):
    model = hf_model(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = prune_structured(model, StructuredConfig(method="magnitude", sparsity=0.25, targets=target))
    assert report.params_removed == _removed_at_25(arch)[target]
    assert {g["kind"] for g in report.groups} == {target}


def _loss(model, batch):  # BERT has no language-model loss of its own
    return model(**batch.kwargs)[0].square().mean()


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("method", ["magnitude", "taylor", "wanda", "flap"])
def test_every_importance_prunes_the_same_architecture(arch, method):
    model = hf_model(arch)
    calib = hf_calibration()
    before = {name for name, _ in model.named_parameters()}
    loss_fn = _loss if arch == "bert" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BERT's config cannot hold 3 heads
        report = prune_structured(model, StructuredConfig(method=method, sparsity=0.25, loss_fn=loss_fn,
                                                          progress=False), calib)
    assert report.method == method
    assert [(g["units_before"], g["units_after"]) for g in report.groups] == [(4, 3), (128, 96)] * 2
    # FLAP's compensation creates biases (and Llama's config switches give their siblings zero ones)
    new_biases = sum(p.numel() for name, p in model.named_parameters() if name not in before)
    assert report.params_before - (report.params_after - new_biases) == sum(_removed_at_25(arch).values())
    assert bool(report.bias_compensated) == (method == "flap")
