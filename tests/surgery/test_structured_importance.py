"""The structured importances (prunekit.solvers.structured): what each removes (planted weak /
dead / constant channels and heads are the ones pruned; FLAP's bias compensation makes removing
constant channels exact), their formulas, and the registry (built-ins and importances registered
from outside prune alike; bad registrations are named)."""

import warnings

import pytest
import torch
from structured_cnn_models import cnn_calibration, tiny_cnn
from structured_hf_models import hf_calibration, hf_model, hf_output

import prunekit.solvers.structured as importances
from prunekit.solvers.structured import (Importance, MemberWeights, bias_compensation, flap_unit_scores, kept_units,
                                         magnitude_unit_scores, register_importance, select_units, taylor_unit_scores,
                                         unit_scores, wanda_unit_scores)
from prunekit.surgery.structured import StructuredConfig, prune_structured

WEAK = list(range(0, 128, 4))  # 32 of the 128 MLP channels


def _mlp_groups(report):
    return [g for g in report.groups if g["kind"] == "mlp"]


def _config(method, sparsity, **fields) -> StructuredConfig:
    return StructuredConfig(method=method, sparsity=sparsity, progress=False, **fields)


def _plant_weak_mlp_channels(model):
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[WEAK] *= 1e-3
            layer.mlp.up_proj.weight[WEAK] *= 1e-3
            layer.mlp.down_proj.weight[:, WEAK] *= 1e-3
    return model


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_weak_mlp_channels_are_removed(method):
    model = _plant_weak_mlp_channels(hf_model("llama"))
    report = prune_structured(model, _config(method, {"mlp": 0.25}, targets="mlp"), hf_calibration())
    for group in _mlp_groups(report):
        assert group["kept_units"] == [c for c in range(128) if c not in WEAK]


def test_taylor_removes_dead_channels_without_changing_the_output():
    model = hf_model("llama")
    with torch.no_grad():  # up rows zero: these channels contribute nothing and get zero gradients
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[WEAK] = 0
    calib = hf_calibration()
    dense = hf_output(model, calib[0])
    report = prune_structured(model, _config("taylor", {"mlp": 0.25}, targets="mlp"), calib)
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
        report = prune_structured(model, _config("flap", {"mlp": 0.25, "heads": 0.25}), calib)
    for group in report.groups:
        expected = [c for c in range(128) if c not in WEAK] if group["kind"] == "mlp" else [0, 1, 3]
        assert group["kept_units"] == expected
    torch.testing.assert_close(hf_output(model, calib[0]), dense, rtol=1e-4, atol=1e-4)
    uncompensated = _constant_opt()
    with pytest.warns(UserWarning, match="does not describe"):
        prune_structured(uncompensated, _config("flap", {"mlp": 0.25, "heads": 0.25}, bias_compensation=False), calib)
    assert (hf_output(uncompensated, calib[0]) - dense).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_flap_compensation_reduces_output_error(arch):
    calib = hf_calibration(batches=4)
    dense = hf_model(arch)
    # Llama: 8 -> 4 heads keeps LlamaConfig valid; OPT/GPT-2 heads are not expressible: MLP only
    sparsity = {"mlp": 0.25, "heads": 0.5} if arch == "llama" else {"mlp": 0.25}
    errors = {}
    for compensate in (False, True):
        model = hf_model(arch)
        prune_structured(model, _config("flap", sparsity, targets=tuple(sparsity), bias_compensation=compensate),
                         calib)
        errors[compensate] = sum(float((hf_output(model, b) - hf_output(dense, b)).square().mean()) for b in calib)
    assert errors[True] < errors[False]


def test_importances_disagree_on_real_scores():
    """The four criteria are different functions: on one model they do not all keep the same units."""
    calib = hf_calibration()
    kept = {}
    for method in ("magnitude", "taylor", "wanda", "flap"):
        model = hf_model("qwen2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flap: Qwen2's config cannot hold down_proj biases
            report = prune_structured(model, _config(method, {"mlp": 0.5}, targets="mlp"), calib)
        kept[method] = tuple(_mlp_groups(report)[0]["kept_units"])
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


# ----------------------------------------------------------------------------- the registry

@pytest.fixture
def registry(monkeypatch):
    """A copy of the importance registry, so that registrations stay inside one test."""
    monkeypatch.setattr(importances, "_REGISTRY", dict(importances._REGISTRY))
    return importances._REGISTRY


def _l1(members, units):
    """Sum of |W| over each unit's weights (the L1 cousin of the magnitude importance)."""
    calls.append([m.name for m in members])
    total = torch.zeros(units, dtype=torch.float64)
    for member in members:
        total += member.gather(member.matrix.detach().to(torch.float64).abs())
    return total


calls: list = []


def test_registered_importance_prunes(registry):
    assert register_importance("l1", _l1) is _l1  # returned, so it can decorate
    calls.clear()
    model = _plant_weak_mlp_channels(hf_model("llama"))
    report = prune_structured(model, _config("l1", {"mlp": 0.25}, targets="mlp"))  # data-free: no calib needed
    assert report.method == "l1" and len(calls) == 2  # one group per block
    assert calls[0] == ["model.layers.0.mlp.gate_proj:out", "model.layers.0.mlp.up_proj:out",
                        "model.layers.0.mlp.down_proj:in"]
    for group in _mlp_groups(report):
        assert group["kept_units"] == [c for c in range(128) if c not in WEAK]
    assert model.model.layers[0].mlp.down_proj.in_features == 96


class _Delegate(Importance):
    """An importance object that declares the needs of a built-in and delegates to its formula."""

    def __init__(self, builtin: str):
        self.builtin = importances._REGISTRY[builtin]
        self.needs = self.builtin.needs
        self.compensates_bias = self.builtin.compensates_bias
        self.name = f"delegate-{builtin}"
        self.seen: list[MemberWeights] = []

    def __call__(self, members, units):
        self.seen.extend(members)
        return self.builtin(members, units)


def _cnn_loss(model, batch):
    return model(*batch.args).square().mean()


@pytest.mark.parametrize("builtin", ["magnitude", "taylor", "wanda", "flap"])
def test_an_importance_object_gets_what_it_declares(builtin):
    calib = cnn_calibration()
    delegate = _Delegate(builtin)
    by_object, by_name = tiny_cnn("mobilenet"), tiny_cnn("mobilenet")
    report = prune_structured(by_object, _config(delegate, 0.25, loss_fn=_cnn_loss), calib)
    prune_structured(by_name, _config(builtin, 0.25, loss_fn=_cnn_loss), calib)
    assert report.method == f"delegate-{builtin}"
    ours, theirs = by_object.state_dict(), by_name.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(m.gradient is not None for m in delegate.seen) == (builtin == "taylor")
    assert any(m.input_norms is not None for m in delegate.seen) == (builtin in ("wanda", "flap"))


def test_registration_errors(registry):
    register_importance("l1", _l1)
    with pytest.raises(ValueError, match=r"register_importance: name: expected a name not registered yet, but 'l1' "
                                         r"is already registered"):
        register_importance("l1", _l1)
    with pytest.raises(ValueError, match=r"'magnitude' is already registered"):
        register_importance("magnitude", _l1)
    with pytest.raises(ValueError, match=r"register_importance: importance: expected a callable\(members, units\) -> "
                                         r"scores, but got int"):
        register_importance("three", 3)
    with pytest.raises(ValueError, match=r"expected an importance object \(an instance\), but got the class _Delegate"):
        register_importance("delegate", _Delegate)
    with pytest.raises(ValueError, match=r"register_importance: name: expected a non-empty str, but got ''"):
        register_importance("", _l1)

    def needs_hessians(members, units):
        return torch.zeros(units)

    needs_hessians.needs = ("hessian",)
    with pytest.raises(ValueError, match=r"importance 'hessian'.needs: expected some of \('statistics', 'gradients'\), "
                                         r"but got 'hessian'"):
        register_importance("hessian", needs_hessians)
    assert "l1" in importances.importance_names() and "hessian" not in registry


def test_bad_scores_are_named():
    out, inn = _members()

    def wrong_shape(members, units):
        return torch.zeros(units + 1)

    def not_finite(members, units):
        return torch.full((units,), float("nan"))

    with pytest.raises(ValueError, match=r"importance 'wrong_shape': expected a tensor of shape \(3,\) \(one score per "
                                         r"unit\), but got \(4,\)"):
        unit_scores([out, inn], 3, wrong_shape)
    with pytest.raises(ValueError, match=r"importance 'not_finite': the scores hold NaN or Inf"):
        unit_scores([out, inn], 3, not_finite)
    with pytest.raises(ValueError, match=r"importance: expected a registered importance name .* but got 'l2'"):
        unit_scores([out, inn], 3, "l2")
