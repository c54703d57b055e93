"""prunekit.prune on CUDA against the same run on CPU, on tiny Hugging Face models: every method
(magnitude, Wanda, SparseGPT, GBLM, random, DSnoT refinement, OWL allocation, N:M), with the
model on the GPU and with a CPU model whose blocks stream to the GPU (PruneConfig(device="cuda")).

Masks of criteria whose scores are the same numbers on both devices (magnitude, random) are equal
bit for bit. Criteria scoring with calibration statistics see activations that the GPU computed in
another summation order, so a score within rounding of its layer's threshold may fall on the
other side: their masks agree on all but a handful of such near-ties (and exactly where nothing is
that close). SparseGPT's reconstruction error on CUDA is within 1.001x of the CPU's."""

import pytest
import torch

import prunekit
from prunekit import PruneConfig
from prunekit.calibrate.pipeline import is_prunable

from tiny_models import calibration, tiny_model

CUDA_READY = prunekit.build_info()["cuda_built"] and torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA build of prunekit and a GPU")]

# (method, sparsity, extra config, mask rule): "exact" masks equal; "near" all but near-ties.
CASES = [
    ("magnitude", 0.5, {}, "exact"),
    ("magnitude", "2:4", {}, "exact"),
    ("random", 0.5, {}, "exact"),
    ("wanda", 0.5, {}, "near"),
    ("wanda", "2:4", {}, "near"),
    ("sparsegpt", 0.5, {}, "error"),
    ("sparsegpt", "2:4", {}, "error"),
    ("sparsegpt", "4:8", {}, "error"),
    ("gblm", 0.5, {}, "near"),
    ("wanda", 0.5, {"refine": "dsnot"}, "near"),
    ("magnitude", 0.5, {"refine": "dsnot"}, "near"),
    ("wanda", 0.6, {"allocation": "owl"}, "near"),
]
# Entries a "near" mask may differ in, as a fraction of a layer's weights (a handful of near-ties).
NEAR_TIE_FRACTION = 0.005


def masks(model):
    return {name: (module.weight.detach() == 0).cpu() for name, module in model.named_modules()
            if name and is_prunable(module)}


def prune(arch, method, sparsity, extra, *, model_device, device=None):
    model = tiny_model(arch).to(model_device)
    config = PruneConfig(method=method, sparsity=sparsity, progress=False, device=device, **extra)
    return model, prunekit.prune(model, config, calibration(arch))


def compare(method, rule, cpu_run, cuda_run):
    (cpu_model, cpu_report), (cuda_model, cuda_report) = cpu_run, cuda_run
    cpu_masks, cuda_masks = masks(cpu_model), masks(cuda_model)
    assert cpu_masks.keys() == cuda_masks.keys()
    cpu_layers = {layer.name: layer for layer in cpu_report.layers}
    cuda_layers = {layer.name: layer for layer in cuda_report.layers}
    assert cpu_layers.keys() == cuda_layers.keys()
    for name, cpu_mask in cpu_masks.items():
        differ = int((cpu_mask != cuda_masks[name]).sum())
        if rule == "exact":
            assert differ == 0, f"{method}: {name}: {differ} mask entries differ"
        elif rule == "near":
            assert differ <= max(2, NEAR_TIE_FRACTION * cpu_mask.numel()), f"{method}: {name}: {differ} differ"
        if name in cpu_layers:
            cpu_layer, cuda_layer = cpu_layers[name], cuda_layers[name]
            if rule == "exact":
                assert cuda_layer.sparsity == cpu_layer.sparsity, name
            elif rule == "near":  # OWL's allocation may move by a near-tie outlier too
                assert abs(cuda_layer.sparsity - cpu_layer.sparsity) <= NEAR_TIE_FRACTION, name
            if cpu_layer.reconstruction_error is not None and rule == "error":
                assert cuda_layer.reconstruction_error <= 1.001 * cpu_layer.reconstruction_error + 1e-7, (
                    name, cuda_layer.reconstruction_error, cpu_layer.reconstruction_error)
    assert cuda_report.total_sparsity == pytest.approx(cpu_report.total_sparsity, abs=1e-3)


# Every case on Llama; on OPT and GPT-2 (Conv1D layers) the main methods (the GPU check's time).
ARCH_CASES = [("llama", *case) for case in CASES] + [
    (arch, *case) for arch in ("opt", "gpt2") for case in CASES if case[:2] in
    (("magnitude", 0.5), ("wanda", "2:4"), ("sparsegpt", 0.5), ("gblm", 0.5))]


@pytest.mark.parametrize("arch,method,sparsity,extra,rule", ARCH_CASES)
def test_model_on_the_gpu_prunes_as_on_cpu(arch, method, sparsity, extra, rule):
    cpu_run = prune(arch, method, sparsity, extra, model_device="cpu")
    cuda_run = prune(arch, method, sparsity, extra, model_device="cuda")
    assert all(p.device.type == "cuda" for p in cuda_run[0].parameters())
    compare(method, rule, cpu_run, cuda_run)


@pytest.mark.parametrize("method,sparsity,extra,rule", [("wanda", 0.5, {}, "near"), ("sparsegpt", "2:4", {}, "error"),
                                                        ("wanda", 0.6, {"allocation": "owl"}, "near")])
def test_cpu_model_streamed_through_the_gpu_prunes_as_on_cpu(method, sparsity, extra, rule):
    cpu_run = prune("llama", method, sparsity, extra, model_device="cpu")
    cuda_run = prune("llama", method, sparsity, extra, model_device="cpu", device="cuda")
    assert all(p.device.type == "cpu" for p in cuda_run[0].parameters())  # blocks went back home
    compare(method, rule, cpu_run, cuda_run)


@pytest.mark.parametrize("method,sparsity", [("magnitude", 0.5), ("random", "2:4")])
def test_data_free_methods_run_on_the_configured_device(method, sparsity):
    cpu_model = tiny_model("opt")
    prunekit.prune(cpu_model, PruneConfig(method=method, sparsity=sparsity, progress=False))
    streamed = tiny_model("opt")
    prunekit.prune(streamed, PruneConfig(method=method, sparsity=sparsity, progress=False, device="cuda"))
    assert all(p.device.type == "cpu" for p in streamed.parameters())
    for (name, expected), actual in zip(masks(cpu_model).items(), masks(streamed).values()):
        assert torch.equal(expected, actual), name
