"""Block-by-block calibration: block discovery, captured inputs, one-shot outputs, memory."""

import gc
import warnings

import pytest
import torch

import prunekit
from prunekit import PruneConfig
from prunekit.calibrate import find_blocks, find_prunable_layers, walk_blocks

from tiny_models import ARCHITECTURES, tiny_model

EXPECTED_BLOCKS = {"llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
                   "opt": "model.decoder.layers", "gpt2": "transformer.h", "bert": "encoder.layer"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_find_blocks(arch):
    name, blocks = find_blocks(tiny_model(arch))
    assert name == EXPECTED_BLOCKS[arch] and len(blocks) == 2


def test_explicit_blocks_path_is_checked():
    with pytest.raises(ValueError, match="blocks: expected the name of a ModuleList.*'model.nothing' does not exist"):
        find_blocks(tiny_model("llama"), "model.nothing")
    with pytest.raises(ValueError, match="nn.ModuleList"):
        find_blocks(tiny_model("llama"), "model.norm")


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2"])
def test_statistics_match_hooks_on_the_dense_model(arch):
    """One-shot walk: every layer's Hessian equals the one from a plain forward of the dense model,
    so the captured block inputs and kwargs (masks, position embeddings) are right."""
    model = tiny_model(arch)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding in the second sequence
    calib = [{"input_ids": ids, "attention_mask": mask}]
    layers = find_prunable_layers(model)
    inputs = {}
    handles = [layer.module.register_forward_hook(
        lambda m, a, o, name=name: inputs.__setitem__(name, a[0].detach())) for name, layer in layers.items()]
    with torch.no_grad():
        model(**calib[0])
    for handle in handles:
        handle.remove()
    token_mask = mask.bool()
    seen = set()
    for step in walk_blocks(model, calib, layers, sequential=False, progress=False):
        for name, stats in step.stats.items():
            x = inputs[name]  # (batch, seq, features), or (batch, features) for BERT's pooler
            x = (x[token_mask] if x.dim() == 3 else x).double()
            expected = 2 / x.shape[0] * x.t() @ x
            assert stats.n_samples == x.shape[0]
            torch.testing.assert_close(stats.hessian.double(), expected, rtol=1e-4, atol=1e-5)
            seen.add(name)
    assert seen == set(layers)


def count_activations(shape):
    """Distinct storages of live tensors of the hidden-state shape (views share a storage)."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gc walks deprecated module attributes
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    return len({t.untyped_storage().data_ptr() for t in tensors
                if not isinstance(t, torch.nn.Parameter) and tuple(t.shape) == shape})


@pytest.mark.parametrize("sequential", [True, False])
def test_at_most_one_block_of_activations_twice(sequential):
    model = tiny_model("llama")
    batch, seq, items = 3, 11, 5
    calib = [torch.randint(0, 128, (batch, seq)) for _ in range(items)]
    layers = find_prunable_layers(model)
    del layers["lm_head"]
    shape = (batch, seq, 64)
    peak = 0
    for step in walk_blocks(model, calib, layers, sequential=sequential, progress=False):
        peak = max(peak, count_activations(shape))
    # sequential: one block's inputs (+ the one being replaced); one-shot: inputs and dense outputs
    assert peak <= (items + 1 if sequential else 2 * items)
    assert peak >= items


def test_blocks_run_on_the_requested_device_and_return_home():
    model = tiny_model("opt")
    report = prunekit.prune(model, PruneConfig(method="wanda", device="cpu", progress=False, ignore=["lm_head"]),
                            [torch.randint(0, 128, (2, 8))])
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert report.total_sparsity == pytest.approx(0.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cpu_model_pruned_block_by_block_on_cuda():
    model = tiny_model("llama")
    reference = tiny_model("llama")
    calib = [torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    report = prunekit.prune(model, PruneConfig(method="wanda", device="cuda", progress=False), calib)
    expected = prunekit.prune(reference, PruneConfig(method="wanda", progress=False), calib)
    assert all(p.device.type == "cpu" for p in model.parameters())
    for a, b in zip(report.layers, expected.layers):
        assert a.sparsity == b.sparsity
        assert a.reconstruction_error == pytest.approx(b.reconstruction_error, rel=1e-3)


@pytest.mark.parametrize("sequential", [True, False])
def test_a_block_without_layers_to_prune_before_pruned_ones(sequential, monkeypatch):
    """Block 0 ignored: the walk passes it through (no statistics pass needed), the statistics
    pass of block 1 stops at its last layer's input, and the weights equal those of a walk that
    runs every statistics pass to the end."""
    from prunekit.calibrate import pipeline
    from tiny_models import calibration

    calib = calibration("llama", batches=3)
    config = PruneConfig(method="sparsegpt", sparsity=0.5, progress=False, sequential=sequential,
                         ignore=("model.layers.0.*", "lm_head"))
    model = tiny_model("llama")
    prunekit.prune(model, config, calib)
    assert all(bool((module.weight != 0).all()) for name, module in model.named_modules()
               if name.startswith("model.layers.0.") and isinstance(module, torch.nn.Linear))
    monkeypatch.setattr(pipeline._SharedInputs, "_stop_at_last", lambda self, module, args, name: None)
    reference = tiny_model("llama")
    prunekit.prune(reference, config, calib)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
