"""Only the statistics a run needs, gathered once per distinct input: bit-identical to gathering
everything per layer (shared q/k/v and gate/up statistics, the shared SparseGPT factor), the
Hessian's diagonal alone equal to the full Hessian's up to rounding, the fallback when layers stop
sharing an input, the report's error kinds and its time breakdown."""

import functools
import importlib
import time

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit import PruneConfig
from prunekit.calibrate.hessian import HessianAccumulator, HessianDiagonalAccumulator
from prunekit.calibrate.pipeline import LayerInputStats, PrunableLayer, find_prunable_layers, walk_blocks
from prunekit.calibrate.timing import StageTimer
from prunekit.solvers.sparsegpt import sparsegpt

from tiny_models import calibration, tiny_model

prune_module = importlib.import_module("prunekit.prune")  # the module (prunekit.prune is also the function)


@pytest.mark.parametrize("features", [576, 1536, 200, 37])
@pytest.mark.parametrize("rows", [[300, 300, 77], [1], [9000]])
def test_hessian_diagonal_alone_matches_the_full_hessians(features, rows):
    generator = torch.Generator().manual_seed(features)
    scale = torch.rand(features, generator=generator) * 4
    full, diagonal = HessianAccumulator(features), HessianDiagonalAccumulator(features)
    reference = torch.zeros(features, dtype=torch.float64)
    for count in rows:
        x = torch.randn(count, features, generator=generator) * scale
        full.add(x)
        diagonal.add(x)
        reference += x.double().square().sum(0)
    assert diagonal.n_samples == full.n_samples == sum(rows)
    reference *= 2 / sum(rows)
    torch.testing.assert_close(diagonal.diagonal.double(), reference, rtol=1e-5, atol=0)
    torch.testing.assert_close(diagonal.diagonal, torch.diagonal(full.hessian), rtol=1e-5, atol=0)


def test_hessian_diagonal_bad_input():
    with pytest.raises(ValueError, match=r"\(rows, 10\)"):
        HessianDiagonalAccumulator(10).add(torch.ones(3, 11))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        HessianDiagonalAccumulator(10, dtype=torch.float16)
    with pytest.raises(ValueError, match="NaN or Inf"):
        HessianDiagonalAccumulator(2).add(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="overflow"):
        HessianDiagonalAccumulator(2).add(torch.tensor([[1.0, 3e20]]))
    empty = HessianDiagonalAccumulator(3)
    empty.add(torch.ones(0, 3))
    assert empty.n_samples == 0 and not empty.diagonal.any()


def test_layer_stats_gather_only_their_needs():
    layer = PrunableLayer("fc", nn.Linear(300, 8))
    x = torch.randn(4, 50, 300)
    everything, norms_only = LayerInputStats(layer), LayerInputStats(layer, needs={"input_norms"})
    everything.add(x)
    norms_only.add(x)
    assert norms_only.accumulator is None and norms_only.feature_sum is None
    torch.testing.assert_close(norms_only.input_norms, everything.input_norms, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="hessian was not gathered"):
        norms_only.hessian
    with pytest.raises(ValueError, match="input_mean was not gathered"):
        norms_only.input_mean
    variance = LayerInputStats(layer, needs={"input_var"})
    variance.add(x)
    torch.testing.assert_close(variance.input_var, everything.input_var, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="needs: expected names among"):
        LayerInputStats(layer, needs={"hessians"})


@pytest.mark.parametrize("needs", [None, {"input_norms"}, {"hessian"}])
def test_non_finite_inputs_name_the_layer(needs):
    stats = LayerInputStats(PrunableLayer("block.fc", nn.Linear(6, 2)), needs=needs)
    x = torch.ones(3, 6)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="block.fc holds NaN or Inf"):
        stats.add(x)


def _walk(model, calib, **kwargs):
    layers = find_prunable_layers(model)
    stats, groups = {}, []
    for step in walk_blocks(model, calib, layers, progress=False, **kwargs):
        groups += [group for group in step.shared if len(group) > 1]
        for name, layer_stats in step.stats.items():
            keys = ["input_norms"] + (["hessian", "input_mean", "input_var"] if layer_stats.accumulator is not None
                                      else [])
            stats[name] = {key: getattr(layer_stats, key).clone() for key in keys}
    return stats, groups


@pytest.mark.parametrize("arch", ["llama", "opt", "bert"])
def test_shared_statistics_equal_per_layer_ones(arch):
    reference, no_groups = _walk(tiny_model(arch), calibration(arch), share_inputs=False)
    shared, groups = _walk(tiny_model(arch), calibration(arch))
    norms, _ = _walk(tiny_model(arch), calibration(arch), needs={"input_norms"})
    assert no_groups == []
    assert any(len(group) == 3 for group in groups)  # q/k/v
    if arch == "llama":
        assert any(group[0].endswith("gate_proj") and group[1].endswith("up_proj") for group in groups)
    for name, expected in reference.items():
        for key, value in expected.items():
            assert torch.equal(shared[name][key], value), (name, key)
        torch.testing.assert_close(norms[name]["input_norms"], expected["input_norms"], rtol=1e-5, atol=0)


class _Block(nn.Module):
    """Two layers reading one input on the first item (batch 2); on the others (batch 3) ``b`` reads
    a copy (``copy_later``), or on every item the input after an in-place change (``modify``)."""

    def __init__(self, mode: str):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.mode = mode

    def forward(self, x):
        first = self.a(x)
        if self.mode == "modify":
            x.mul_(1.5)
        elif self.mode == "copy_later" and x.shape[0] != 2:
            x = x * 1.5
        return self.out(first + self.b(x))


class _Stack(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([_Block(mode), _Block(mode)])

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


@pytest.mark.parametrize("mode", ["copy_later", "modify"])
def test_layers_that_stop_sharing_an_input_fall_back_to_their_own_statistics(mode):
    calib = [torch.randn(2 if i == 0 else 3, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    reference, _ = _walk(_Stack(mode), [c.clone() for c in calib], share_inputs=False)
    shared, groups = _walk(_Stack(mode), [c.clone() for c in calib])
    assert groups == []
    for name, expected in reference.items():
        for key, value in expected.items():
            assert torch.equal(shared[name][key], value), (name, key)


def _prune_weights(model, config, calib, monkeypatch=None, share=True):
    if monkeypatch is not None and not share:
        monkeypatch.setattr(prune_module, "walk_blocks", functools.partial(walk_blocks, share_inputs=False))
    report = prunekit.prune(model, config, calib)
    if monkeypatch is not None:
        monkeypatch.undo()
    return {name: p.detach().clone() for name, p in model.named_parameters()}, report


@pytest.mark.parametrize("method,sparsity", [("wanda", 0.5), ("sparsegpt", 0.5), ("sparsegpt", "2:4"), ("ria", 0.5)])
def test_prune_with_shared_statistics_is_bit_identical(monkeypatch, method, sparsity):
    if method not in prunekit.criteria.names():
        pytest.skip(f"{method} is not registered")
    calib = calibration("llama")
    config = PruneConfig(method=method, sparsity=sparsity, progress=False)
    per_layer, _ = _prune_weights(tiny_model("llama"), config, calib, monkeypatch, share=False)
    shared, report = _prune_weights(tiny_model("llama"), config, calib)
    assert all(torch.equal(shared[name], value) for name, value in per_layer.items())
    assert report.reconstruction_error_kind == ("exact" if method == "sparsegpt" else "diagonal")


def test_shared_sparsegpt_factor_gives_the_per_layer_solve():
    """The factor computed once for q/k/v is the one each layer computes itself, dead inputs too."""
    model = tiny_model("llama")
    layers = find_prunable_layers(model)
    step = next(iter(walk_blocks(model, calibration("llama"), layers, progress=False)))
    stats = step.stats["model.layers.0.self_attn.q_proj"]
    assert stats is step.stats["model.layers.0.self_attn.v_proj"] and stats.readers == 3
    stats.accumulator.hessian[5, :] = 0  # a dead input
    stats.accumulator.hessian[:, 5] = 0
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                 "model.layers.0.self_attn.v_proj"):
        weight = layers[name].matrix().float()
        expected, expected_keep = sparsegpt(weight, stats.hessian, sparsity=0.5)
        got, keep = sparsegpt(weight, stats.hessian, sparsity=0.5, factor=lambda: stats.inverse_hessian_factor(0.01))
        assert torch.equal(got, expected) and torch.equal(keep, expected_keep), name
        assert bool((got[:, 5] == 0).all())
    assert stats._factor == []  # dropped once its three readers had it


def test_report_error_kinds():
    calib = calibration("llama")
    exact = prunekit.prune(tiny_model("llama"), PruneConfig(method="wanda", report_errors="exact", progress=False),
                           calib)
    auto = prunekit.prune(tiny_model("llama"), PruneConfig(method="wanda", progress=False), calib)
    none = prunekit.prune(tiny_model("llama"), PruneConfig(method="wanda", report_errors=None, progress=False), calib)
    assert exact.reconstruction_error_kind == "exact" and auto.reconstruction_error_kind == "diagonal"
    assert none.reconstruction_error_kind is None and none.total_reconstruction_error is None
    assert all(0 < layer.reconstruction_error < 1 for layer in auto.layers)
    assert auto.to_dict()["reconstruction_error_kind"] == "diagonal"
    # the estimate leaves out the inputs' correlations, not the layer's scale
    assert auto.total_reconstruction_error == pytest.approx(exact.total_reconstruction_error, rel=0.5)
    sparsegpt_report = prunekit.prune(tiny_model("llama"), PruneConfig(method="sparsegpt", progress=False), calib)
    assert sparsegpt_report.reconstruction_error_kind == "exact"
    with pytest.raises(ValueError, match="report_errors"):
        PruneConfig(report_errors="fast")


def test_magnitude_without_reported_errors_runs_no_forwards():
    model = tiny_model("llama")
    calls = []
    model.model.layers[0].register_forward_hook(lambda *args: calls.append(1))
    report = prunekit.prune(model, PruneConfig(method="magnitude", report_errors=None, progress=False),
                            calibration("llama"))
    assert calls == [] and report.total_reconstruction_error is None
    assert "calibration_forwards" not in report.timings


def test_report_time_breakdown():
    report = prunekit.prune(tiny_model("llama"), PruneConfig(method="sparsegpt", progress=False), calibration("llama"))
    timings = report.timings
    assert {"calibration_forwards", "statistics", "solves", "errors", "other", "total"} <= set(timings)
    assert all(seconds >= 0 for seconds in timings.values())
    parts = sum(seconds for stage, seconds in timings.items() if stage != "total")
    assert parts == pytest.approx(timings["total"], abs=1e-3)
    assert report.to_dict()["timings"] == timings and "seconds:" in report.summary()


def test_stage_timer_is_exclusive():
    timer = StageTimer()
    started = time.perf_counter()
    with timer.stage("outer"):
        time.sleep(0.02)
        with timer.stage("inner"):
            time.sleep(0.03)
    total = time.perf_counter() - started
    assert timer.seconds["inner"] >= 0.03 and timer.seconds["outer"] >= 0.02
    assert timer.seconds["outer"] + timer.seconds["inner"] <= total  # the inner stage is not counted twice
    assert timer.seconds["outer"] <= total - timer.seconds["inner"]


def test_set_matrix_adopts_the_matrix_only_where_it_fits():
    linear = nn.Linear(6, 4)
    layer, param = PrunableLayer("fc", linear), linear.weight
    fresh, version = torch.randn(4, 6), param._version
    layer.set_matrix(fresh, adopt=True)
    assert linear.weight is param and param.data_ptr() == fresh.data_ptr() and param.requires_grad
    assert param._version > version  # as an in-place copy: autograd sees the weight changed
    # Copied: a view into a larger buffer, another dtype or an inference tensor (adopt asked), or
    # adopt not asked.
    with torch.inference_mode():
        inference = torch.randn(4, 6)
    for matrix, adopt in ((torch.randn(8, 6)[2:6], True), (torch.randn(4, 6, dtype=torch.float64), True),
                          (inference, True), (torch.randn(4, 6), False)):
        before = param.data_ptr()
        layer.set_matrix(matrix, adopt=adopt)
        assert param.data_ptr() == before and torch.equal(param.detach(), matrix.to(param.dtype))
    # A weight inside a larger buffer (a flat parameter) is written in place, where the buffer sees it.
    flat = torch.zeros(30)
    linear.weight = nn.Parameter(flat[6:30].view(4, 6))
    layer.set_matrix(torch.randn(4, 6), adopt=True)
    assert torch.equal(flat[6:].view(4, 6), linear.weight.detach()) and bool(flat[6:].ne(0).all())
    # A transformers Conv1D holds (in, out): the transposed matrix is not contiguous, so it is copied.
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D(4, 6)
    layer = PrunableLayer("c", conv1d)
    matrix = torch.randn(4, 6)
    layer.set_matrix(matrix, adopt=True)
    assert torch.equal(conv1d.weight.detach(), matrix.t()) and conv1d.weight.data_ptr() != matrix.data_ptr()
