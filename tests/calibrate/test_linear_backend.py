"""The calibration forwards' GEMM library (calibrate/linear_backend.py): the choice, the patched
linears (same results as F.linear up to rounding, hooks kept, fallbacks), bad settings."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunekit
from prunekit.calibrate import linear_backend
from prunekit.calibrate.linear_backend import linears_through, onednn_available, resolve_linear_backend

from tiny_models import calibration, tiny_model

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def test_resolve_settings_and_bad_input(monkeypatch):
    assert resolve_linear_backend("aten") == "aten"
    assert resolve_linear_backend("auto", single_process=False) == "aten"
    assert resolve_linear_backend("auto") in ("aten", "onednn")
    # "auto" measures once per process and thread count, without touching the global random stream.
    measured = []
    monkeypatch.setattr(linear_backend, "_measured", {})
    monkeypatch.setattr(linear_backend, "onednn_available", lambda: True)
    monkeypatch.setattr(linear_backend, "_measure", lambda: measured.append(1) or "onednn")
    assert [resolve_linear_backend("auto") for _ in range(3)] == ["onednn"] * 3 and measured == [1]
    assert resolve_linear_backend("auto", device="meta") == "onednn"
    assert resolve_linear_backend("auto", device="cuda") == resolve_linear_backend("onednn", device="cuda") == "aten"
    monkeypatch.undo()
    state = torch.random.get_rng_state()
    linear_backend._measure()
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match=r"PruneConfig.linear_backend: expected one of 'auto', 'aten', "
                                         r"'onednn', but got 'mkl'"):
        prunekit.PruneConfig(method="wanda", linear_backend="mkl")
    with pytest.raises(ValueError, match="walk: expected one of"):
        resolve_linear_backend("blas", owner="walk")


def test_onednn_turned_off_by_the_user_is_not_used(monkeypatch):
    monkeypatch.setattr(linear_backend, "_measured", {})
    monkeypatch.setattr(linear_backend, "_measure", lambda: "onednn")
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not onednn_available() and resolve_linear_backend("auto") == "aten"
    with pytest.raises(ValueError, match="and oneDNN enabled"):
        resolve_linear_backend("onednn")


def test_onednn_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(linear_backend, "onednn_available", lambda: False)
    assert resolve_linear_backend("auto") == "aten"
    with pytest.raises(ValueError, match="'onednn' needs a torch build with oneDNN"):
        resolve_linear_backend("onednn")


@needs_onednn
def test_patched_linears_match_f_linear_keep_hooks_and_are_restored(monkeypatch):
    calls = []
    onednn_linear = linear_backend.onednn_linear
    monkeypatch.setattr(linear_backend, "onednn_linear", lambda *args: calls.append(1) or onednn_linear(*args))
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(37, 53), nn.ReLU(), nn.Linear(53, 11, bias=False))
    seen = []
    block[0].register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    x = torch.randn(3, 5, 37)
    expected = block(x)
    with torch.no_grad(), linears_through(block, "onednn"):
        assert "forward" in block[0].__dict__ and "forward" in block[2].__dict__
        got = block(x)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)
    assert seen == [x.shape, x.shape] and len(calls) == 2  # both linears ran through oneDNN
    strided = torch.randn(5, 3, 37).transpose(0, 1)  # a non-contiguous input
    with torch.no_grad():
        expected = block(strided)
        with linears_through(block, "onednn"):
            torch.testing.assert_close(block(strided), expected, rtol=1e-5, atol=1e-5)
    assert "forward" not in block[0].__dict__ and "forward" not in block[2].__dict__
    with linears_through(block, "aten"):
        assert "forward" not in block[0].__dict__


@needs_onednn
@pytest.mark.parametrize("case", ["bf16", "grad", "bias grad", "autocast", "1-D"])
def test_patched_linears_fall_back_to_f_linear(case, monkeypatch):
    monkeypatch.setattr(linear_backend, "onednn_linear", lambda *args: pytest.fail("oneDNN ran"))
    torch.manual_seed(0)
    linear = nn.Linear(8, 4)
    x = torch.randn(8) if case == "1-D" else torch.randn(2, 8)
    if case == "bf16":
        linear, x = linear.to(torch.bfloat16), x.to(torch.bfloat16)
    if case == "bias grad":
        linear.weight.requires_grad_(False)
    with linears_through(linear, "onednn"), torch.set_grad_enabled("grad" in case):
        if case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got, expected = linear(x), F.linear(x, linear.weight, linear.bias)
        else:
            got, expected = linear(x), F.linear(x, linear.weight, linear.bias)
    assert torch.equal(got, expected) and got.dtype == expected.dtype
    assert got.requires_grad == ("grad" in case)


@needs_onednn
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_with_onednn_matches_aten_up_to_rounding(method, monkeypatch):
    calib = calibration("llama")
    reports, weights, calls = {}, {}, []
    onednn_linear = linear_backend.onednn_linear
    monkeypatch.setattr(linear_backend, "onednn_linear", lambda *args: calls.append(1) or onednn_linear(*args))
    for backend in ("aten", "onednn"):
        calls.clear()
        model = tiny_model("llama")
        reports[backend] = prunekit.prune(model, prunekit.PruneConfig(method=method, sparsity=0.5, progress=False,
                                                                     linear_backend=backend), calib)
        weights[backend] = {name: p.detach().clone() for name, p in model.named_parameters()}
        assert bool(calls) == (backend == "onednn")  # the walk's linears ran through oneDNN, or never
    assert reports["aten"].linear_backend == "aten" and reports["onednn"].linear_backend == "onednn"
    assert reports["onednn"].to_dict()["linear_backend"] == "onednn"
    assert reports["onednn"].total_sparsity == reports["aten"].total_sparsity
    for a, b in zip(reports["aten"].layers, reports["onednn"].layers):
        assert b.reconstruction_error == pytest.approx(a.reconstruction_error, rel=1e-2, abs=1e-6)
    agree = [(weights["aten"][n] != 0).eq(weights["onednn"][n] != 0).float().mean() for n in weights["aten"]]
    assert min(agree) > 0.97  # only near-ties of the scores may flip
