"""What each importance removes: planted weak / dead / constant channels and heads are the ones
pruned; FLAP's bias compensation makes removing constant channels exact."""

import warnings

import pytest
import torch
from structured_hf_models import hf_calibration, hf_model, hf_output

from prunekit.solvers.structured import (MemberWeights, bias_compensation, flap_unit_scores, kept_units,
                                         magnitude_unit_scores, select_units, taylor_unit_scores, wanda_unit_scores)
from prunekit.surgery.structured import prune_structured

WEAK = list(range(0, 128, 4))  # 32 of the 128 MLP channels


def _mlp_groups(report):
    return [g for g in report.groups if g["kind"] == "mlp"]


@pytest.mark.parametrize("importance", ["magnitude", "wanda"])
def test_weak_mlp_channels_are_removed(importance):
    model = hf_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[WEAK] *= 1e-3
            layer.mlp.up_proj.weight[WEAK] *= 1e-3
            layer.mlp.down_proj.weight[:, WEAK] *= 1e-3
    report = prune_structured(model, {"mlp": 0.25}, targets="mlp", importance=importance, calib=hf_calibration())
    for group in _mlp_groups(report):
        assert group["kept_units"] == [c for c in range(128) if c not in WEAK]


def test_taylor_removes_dead_channels_without_changing_the_output():
    model = hf_model("llama")
    with torch.no_grad():  # up rows zero: these channels contribute nothing and get zero gradients
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[WEAK] = 0
    calib = hf_calibration()
    dense = hf_output(model, calib[0])
    report = prune_structured(model, {"mlp": 0.25}, targets="mlp", importance="taylor", calib=calib)
    for group in _mlp_groups(report):
        assert group["kept_units"] == [c for c in range(128) if c not in WEAK]
    torch.testing.assert_close(hf_output(model, calib[0]), dense, rtol=1e-5, atol=1e-5)


def _constant_opt():
    """OPT whose fc1 rows WEAK are zero with bias 0.5 (ReLU(0.5): a constant channel; the other
    channels get bias 3 so that none is always zero after the ReLU, which is constant too) and whose
    head 2 has zero value rows with a constant value bias (its output is that constant)."""
    model = hf_model("opt")
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc1.bias.fill_(3.0)  # every other channel alive (no ReLU-dead channel is constant too)
            layer.fc1.weight[WEAK] = 0
            layer.fc1.bias[WEAK] = 0.5
            layer.self_attn.v_proj.weight[32:48] = 0
            layer.self_attn.v_proj.bias[32:48] = torch.linspace(-1, 1, 16)
    return model


def test_flap_removes_constant_channels_and_compensation_makes_it_exact():
    calib = hf_calibration()
    dense = hf_output(_constant_opt(), calib[0])
    model = _constant_opt()
    with pytest.warns(UserWarning, match="does not describe"):  # 3 heads: OPTConfig cannot say so
        report = prune_structured(model, {"mlp": 0.25, "heads": 0.25}, importance="flap", calib=calib)
    for group in report.groups:
        expected = [c for c in range(128) if c not in WEAK] if group["kind"] == "mlp" else [0, 1, 3]
        assert group["kept_units"] == expected
    torch.testing.assert_close(hf_output(model, calib[0]), dense, rtol=1e-4, atol=1e-4)
    uncompensated = _constant_opt()
    with pytest.warns(UserWarning, match="does not describe"):
        prune_structured(uncompensated, {"mlp": 0.25, "heads": 0.25}, importance="flap", calib=calib,
                         bias_compensation=False)
    assert (hf_output(uncompensated, calib[0]) - dense).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_flap_compensation_reduces_output_error(arch):
    calib = hf_calibration(batches=4)
    dense = hf_model(arch)
    # Llama: 8 -> 4 heads keeps LlamaConfig valid; OPT/GPT-2 heads are not expressible: MLP only
    ratio = {"mlp": 0.25, "heads": 0.5} if arch == "llama" else {"mlp": 0.25}
    errors = {}
    for compensate in (False, True):
        model = hf_model(arch)
        prune_structured(model, ratio, targets=tuple(ratio), importance="flap", calib=calib,
                         bias_compensation=compensate)
        errors[compensate] = sum(float((hf_output(model, b) - hf_output(dense, b)).square().mean()) for b in calib)
    assert errors[True] < errors[False]


def test_importances_disagree_on_real_scores():
    """The four criteria are different functions: on one model they do not all keep the same units."""
    calib = hf_calibration()
    kept = {}
    for importance in ("magnitude", "taylor", "wanda", "flap"):
        model = hf_model("qwen2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flap: Qwen2's config cannot hold down_proj biases
            report = prune_structured(model, {"mlp": 0.5}, targets="mlp", importance=importance, calib=calib)
        kept[importance] = tuple(_mlp_groups(report)[0]["kept_units"])
    assert len(set(kept.values())) == 4


# ----------------------------------------------------------------------------- the criteria's math

def _members():
    torch.manual_seed(0)
    producer = torch.randn(6, 5)
    consumer = torch.randn(4, 6)
    units = torch.arange(3)
    out = MemberWeights("out", producer, torch.stack([units * 2, units * 2 + 1], 1), gradient=torch.randn(6, 5),
                        input_norms=torch.rand(5) + 0.5, name="p")
    inn = MemberWeights("in", consumer, torch.stack([units * 2, units * 2 + 1], 1), gradient=torch.randn(4, 6),
                        input_norms=torch.rand(6) + 0.5, input_var=torch.rand(6), name="c")
    return out, inn


def test_criteria_match_their_formulas():
    out, inn = _members()
    for unit in range(3):
        rows = cols = [2 * unit, 2 * unit + 1]
        magnitude = (out.matrix[rows].square().sum() + inn.matrix[:, cols].square().sum()).sqrt()
        taylor = (out.matrix[rows] * out.gradient[rows]).abs().sum() + \
            (inn.matrix[:, cols] * inn.gradient[:, cols]).abs().sum()
        wanda = (out.matrix[rows].abs() * out.input_norms).sum() + \
            (inn.matrix[:, cols].abs() * inn.input_norms[cols]).sum()
        flap = (inn.input_var[cols] * inn.matrix[:, cols].square().sum(0)).sum()
        torch.testing.assert_close(magnitude_unit_scores([out, inn], 3)[unit], magnitude)
        torch.testing.assert_close(taylor_unit_scores([out, inn], 3)[unit], taylor)
        torch.testing.assert_close(wanda_unit_scores([out, inn], 3)[unit], wanda)
        torch.testing.assert_close(flap_unit_scores([out, inn], 3)[unit], flap)


def test_bias_compensation_formula():
    weight = torch.randn(3, 5)
    mean = torch.randn(5)
    removed = torch.tensor([1, 4])
    torch.testing.assert_close(bias_compensation(weight, removed, mean), weight[:, removed] @ mean[removed])


def test_kept_units_and_selection():
    assert kept_units(128, 0.25) == 96
    assert kept_units(128, 0.0, 64) == 128
    assert kept_units(128, 0.3, 16) == 96  # 89.6 -> nearest multiple of 16
    assert kept_units(16, 0.25, 8) == 16  # 12 -> 16 (half up)
    assert kept_units(100, 0.25, 64) == 64  # at most the largest multiple not above 100
    assert kept_units(4, 0.25) == 3 and kept_units(2, 0.25) == 2 and kept_units(4, 0.9) == 0
    assert kept_units(5, 0.5, 8) == 0  # no multiple of 8 fits: the caller raises
    assert select_units(torch.tensor([1.0, 3.0, 3.0, 0.5, 2.0]), 3).tolist() == [1, 2, 4]
    assert select_units(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]  # ties: lower index
