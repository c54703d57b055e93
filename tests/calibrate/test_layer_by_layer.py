"""Layer-by-layer calibration (PruneConfig(within_block="sequential")): each group's statistics
equal those of whole-model forwards through everything pruned before it; blocks whose layers do
not run once fall back to the two passes; departures, errors and early stops end every item thread."""

import contextlib
import threading

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit import PruneConfig
from prunekit.calibrate.pipeline import CalibrationError, LayerInputStats, find_prunable_layers, walk_blocks

from tiny_models import calibration, tiny_model


def _prune_half(layers):
    """A deterministic stand-in for a solver: zeroes the smaller half of each weight by magnitude."""
    for layer in layers.values():
        weight = layer.matrix()
        threshold = weight.abs().flatten().kthvalue(weight.numel() // 2).values
        layer.set_matrix(torch.where(weight.abs() > threshold, weight, torch.zeros_like(weight)))


def _reference_hessian(model, calib, layer):
    """H of ``layer``'s input from whole-model forwards (token masks all ones here)."""
    stats = LayerInputStats(layer, needs={"hessian"})
    handle = layer.module.register_forward_hook(lambda module, args, output: stats.add(args[0]))
    try:
        with torch.no_grad():
            for item in calib:
                model(**item)
    finally:
        handle.remove()
    return stats.hessian


@pytest.mark.parametrize("arch,context", [("llama", None), ("opt", None), ("gpt2", None), ("bert", None),
                                          ("llama", "autocast"), ("llama", "inference_mode")])
def test_each_group_calibrates_on_the_layers_pruned_before_it(arch, context):
    """Also under the caller's autocast or inference mode, which the item threads take over."""
    with contextlib.ExitStack() as stack:
        if context == "autocast":
            # no cast cache: the reference's forwards would reuse casts of the weights from before pruning
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))
        elif context == "inference_mode":
            stack.enter_context(torch.inference_mode())
        _check_groups_against_whole_model_forwards(arch)


def _check_groups_against_whole_model_forwards(arch):
    calib = calibration(arch)
    walked, reference = tiny_model(arch), tiny_model(arch)
    walked_layers, reference_layers = find_prunable_layers(walked), find_prunable_layers(reference)
    steps = 0
    for step in walk_blocks(walked, calib, walked_layers, progress=False, needs={"hessian"},
                            within_block="sequential"):
        if step.index >= 0:  # a group of a block (the layers outside the blocks come last, together)
            steps += 1
            assert step.shared == [list(step.layers)]
        leader = reference_layers[next(iter(step.layers))]
        expected = _reference_hessian(reference, calib, leader)
        for name in step.layers:
            torch.testing.assert_close(step.stats[name].hessian, expected, rtol=1e-5, atol=1e-6)
        _prune_half(step.layers)
        _prune_half({name: reference_layers[name] for name in step.layers})
    assert steps >= 2 * 4  # two blocks, each of at least four groups (q/k/v, o, and two MLP layers)
    for name, parameter in walked.named_parameters():
        assert torch.equal(parameter, dict(reference.named_parameters())[name]), name


@pytest.mark.parametrize("method,sparsity", [("wanda", 0.5), ("sparsegpt", "2:4"), ("ria", 0.7)])
def test_prune_layer_by_layer_hits_the_sparsity_and_leaves_no_thread(method, sparsity):
    threads = threading.active_count()
    model = tiny_model("llama")
    config = PruneConfig(method=method, sparsity=sparsity, progress=False, within_block="sequential")
    report = prunekit.prune(model, config, calibration("llama"))
    target = 0.5 if sparsity == "2:4" else sparsity
    assert report.total_sparsity == pytest.approx(target, abs=1e-3)
    assert report.timings["calibration_forwards"] > 0
    assert threading.active_count() == threads
    with torch.no_grad():
        assert torch.isfinite(model(**calibration("llama")[0]).logits).all()


class _TwiceBlock(nn.Module):
    """Runs ``a`` twice per forward: the layer-by-layer walk cannot pause it once per layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(self.a(self.a(x)))


class _CopyLaterBlock(nn.Module):
    """``a`` and ``b`` read one tensor on items of batch 2; on the others ``b`` reads a copy."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        first = self.a(x)
        if x.shape[0] != 2:
            x = x * 1.5
        return self.out(first + self.b(x))


class _Stack(nn.Module):
    def __init__(self, block):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([block(), block()])

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


def _calib(first_batch: int = 2):
    return [torch.randn(first_batch if i == 0 else 3, 5, 8, generator=torch.Generator().manual_seed(i))
            for i in range(3)]


def test_a_block_running_a_layer_twice_takes_the_two_passes():
    calib = _calib()
    parallel, sequential = _Stack(_TwiceBlock), _Stack(_TwiceBlock)
    prunekit.prune(parallel, PruneConfig(sparsity=0.5, progress=False), calib)
    prunekit.prune(sequential, PruneConfig(sparsity=0.5, progress=False, within_block="sequential"), calib)
    for name, parameter in parallel.named_parameters():
        assert torch.equal(parameter, dict(sequential.named_parameters())[name]), name


def test_a_departure_from_the_probed_order_names_the_layer_and_stops_the_threads():
    threads = threading.active_count()
    with pytest.raises(CalibrationError, match=r"item 1 layer layers\.0\.b did not read the input of layers\.0\.a"):
        prunekit.prune(_Stack(_CopyLaterBlock), PruneConfig(sparsity=0.5, progress=False, within_block="sequential"),
                       _calib())
    assert threading.active_count() == threads


def test_an_error_in_an_items_forward_reaches_the_caller():
    calib = _calib()
    calib[2] = torch.randn(3, 5, 7)  # the wrong width: the block's first layer raises
    threads = threading.active_count()
    with pytest.raises(Exception, match="7|8"):
        prunekit.prune(_Stack(_CopyLaterBlock), PruneConfig(sparsity=0.5, progress=False, within_block="sequential"),
                       calib)
    assert threading.active_count() == threads


def test_stopping_the_walk_early_ends_every_item_thread():
    model = tiny_model("llama")
    threads = threading.active_count()
    walk = walk_blocks(model, calibration("llama"), find_prunable_layers(model), progress=False,
                       within_block="sequential")
    next(walk)
    assert threading.active_count() > threads
    walk.close()
    assert threading.active_count() == threads


def test_within_block_bad_input():
    with pytest.raises(ValueError, match="within_block: expected one of 'parallel', 'sequential', but got 'layers'"):
        PruneConfig(within_block="layers")
    with pytest.raises(ValueError, match="sequential=False"):
        PruneConfig(within_block="sequential", sequential=False)
    with pytest.raises(ValueError, match="refine='block'"):
        PruneConfig(within_block="sequential", refine="block")
    with pytest.raises(ValueError, match="compensate"):
        PruneConfig(within_block="sequential", compensate=4)
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="after_block"):
        next(walk_blocks(model, calibration("llama"), find_prunable_layers(model), within_block="sequential",
                         after_block=lambda *args: None))


def test_too_many_item_threads_are_refused(monkeypatch):
    from prunekit.calibrate import layer_by_layer

    monkeypatch.setattr(layer_by_layer, "MAX_THREADS", 3)
    threads = threading.active_count()
    with pytest.raises(ValueError, match=r"one thread per calibration item.*4 items x \d+ threads"):
        prunekit.prune(tiny_model("llama"), PruneConfig(progress=False, within_block="sequential"),
                       calibration("llama"))
    assert threading.active_count() == threads
