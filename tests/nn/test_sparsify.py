"""prunekit.sparsify_ after prunekit.prune: tiny Hugging Face models of four architectures and two
CNNs match their masked dense selves; the summary; what is skipped; errors leave the model as is."""

import copy

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit import PruneConfig
from prunekit.nn import SparseConv2d, SparseLinear

from cnn_models import CNN_ARCHITECTURES, cnn_calibration, cnn_model
from tiny_models import calibration, tiny_model

HF_ARCHITECTURES = ["llama", "opt", "gpt2", "bert"]


def hf_output(model, batch):
    with torch.no_grad():
        output = model(**batch)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


_PRUNED = {}


def pruned_hf(arch, sparsity, dtype=torch.float32):
    """A pruned tiny model (magnitude: data-free and fast; the criterion does not matter here), LM
    head included; cached, a fresh copy each call."""
    if (arch, sparsity) not in _PRUNED:
        model = tiny_model(arch)
        prunekit.prune(model, PruneConfig(method="magnitude", sparsity=sparsity, progress=False), None)
        _PRUNED[arch, sparsity] = model
    return copy.deepcopy(_PRUNED[arch, sparsity]).to(dtype)


def fmt(sparsity) -> str:
    """The explicit format for a pruning pattern (with "auto", 50% and 2:4 stay dense: below the
    measured break-even at the default 16 rows per call)."""
    return "2:4" if sparsity == "2:4" else "unstructured"


def pruned_cnn(arch, sparsity):
    model = cnn_model(arch)
    ignore = ["stem.0"] if sparsity == "2:4" else []  # 27 inputs per output channel: no groups of four
    prunekit.prune(model, PruneConfig(method="magnitude", sparsity=sparsity, ignore=ignore, progress=False),
                   cnn_calibration())
    return model


@pytest.mark.parametrize("arch", HF_ARCHITECTURES)
@pytest.mark.parametrize("sparsity,dtype", [(0.5, torch.float32), ("2:4", torch.float32), ("2:4", torch.bfloat16)])
def test_hf_models_match_their_masked_dense_selves(arch, sparsity, dtype):
    model = pruned_hf(arch, sparsity, dtype)
    batch = calibration(arch, seed=7)[0]
    expected = hf_output(model, batch)
    summary = prunekit.sparsify_(model, format=fmt(sparsity))
    swapped = {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert set(swapped) == set(summary.swapped) and len(swapped) >= 9
    assert set(summary.swapped.values()) == {fmt(sparsity)}
    assert not summary.kept_dense and not summary.notes
    assert summary.bytes_after < summary.bytes_before
    if arch == "gpt2":
        assert {m.source for m in swapped.values()} == {"conv1d", "linear"}  # Conv1D blocks and the LM head
    got = hf_output(model, batch)
    scale = expected.float().abs().max()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got.float() - expected.float()).abs().max() <= tol * scale


@pytest.mark.parametrize("arch", CNN_ARCHITECTURES)
@pytest.mark.parametrize("sparsity", [0.5, "2:4", 0.9])
def test_cnns_match_their_masked_dense_selves(arch, sparsity):
    model = pruned_cnn(arch, sparsity)
    x = cnn_calibration(seed=5)[0]
    with torch.no_grad():
        expected = model(x)
    summary = prunekit.sparsify_(model, format=fmt(sparsity))
    convs = [m for m in model.modules() if isinstance(m, SparseConv2d)]
    assert convs and summary.swapped
    if sparsity == "2:4":  # the 10-class heads are valid 2:4 but have too few rows for the 2:4 layout
        head = "fc" if arch == "resnet" else "classifier"
        assert summary.swapped[head] == "unstructured" and "rows % 32" in summary.notes[head]
        assert sum(f == "2:4" for f in summary.swapped.values()) == len(summary.swapped) - 1
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert all(n not in summary.swapped for n in depthwise)  # depthwise convs are neither pruned nor swapped
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=1e-4)


def test_auto_swaps_only_what_runs_faster():
    model = pruned_cnn("mobilenet", 0.9)
    summary = prunekit.sparsify_(model)
    pointwise = {"blocks.0.expand", "blocks.0.project", "blocks.1.expand", "blocks.1.project", "head"}
    assert set(summary.swapped) == pointwise | {"classifier"} and set(summary.swapped.values()) == {"unstructured"}
    assert set(summary.kept_dense) == {"stem.0"}  # a 3x3 conv: no sparse kernel beats oneDNN's
    resnet = pruned_cnn("resnet", 0.9)
    summary = prunekit.sparsify_(resnet)
    assert set(summary.swapped) == {"fc"} and "layer1.conv1" in summary.kept_dense
    llama = pruned_hf("llama", "2:4")
    assert not prunekit.sparsify_(copy.deepcopy(llama)).swapped  # 50% is below the fp32 break-even at 16 rows
    summary = prunekit.sparsify_(llama, rows=1)  # one token per call: 2:4 pays
    assert set(summary.swapped.values()) == {"2:4"} and "lm_head" in summary.swapped


def test_summary_and_auto_choices():
    model = pruned_hf("llama", 0.5)
    with torch.no_grad():  # one layer barely pruned: auto keeps it dense
        model.model.layers[0].mlp.down_proj.weight.normal_()
        model.model.layers[0].mlp.down_proj.weight[0, :3] = 0
    before = prunekit.surgery.model_bytes(model)
    assert not prunekit.sparsify_(copy.deepcopy(model)).swapped  # 50%: below the break-even at 16 rows
    summary = prunekit.sparsify_(model, break_even=0.4)
    assert summary.bytes_before == before and summary.bytes_after == prunekit.surgery.model_bytes(model)
    assert "model.layers.0.mlp.down_proj" in summary.kept_dense
    assert "break-even" in summary.kept_dense["model.layers.0.mlp.down_proj"]
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    assert summary.swapped_bytes_after < 0.75 * summary.swapped_bytes_before
    text = str(summary)
    assert "swapped" in text and "unstructured" in text
    assert summary.to_dict()["ratio"] == pytest.approx(summary.bytes_after / summary.bytes_before)
    again = prunekit.sparsify_(model, break_even=0.4)  # idempotent: sparse modules are not prunable modules
    assert not again.swapped


def test_filter_fn_and_explicit_formats():
    model = pruned_hf("opt", "2:4")
    summary = prunekit.sparsify_(model, filter_fn=lambda name, module: "fc" in name, format="unstructured")
    assert summary.swapped and all("fc" in n for n in summary.swapped)
    assert all(reason == "filtered out by filter_fn" for reason in summary.skipped.values())
    dense_model = pruned_hf("opt", 0.5)
    summary = prunekit.sparsify_(dense_model, format="dense")
    assert set(summary.swapped.values()) == {"dense"}


def test_tied_weights_and_multihead_attention_are_skipped():
    model = tiny_model("llama")
    model.lm_head.weight = model.model.embed_tokens.weight
    with torch.no_grad():
        model.lm_head.weight[:, 0] = 0
    summary = prunekit.sparsify_(model, format="unstructured")
    assert "lm_head" in summary.skipped and "shared" in summary.skipped["lm_head"]

    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.out = nn.Linear(32, 32)

        def forward(self, x):
            return self.out(self.attn(x, x, x)[0])

    model = WithMHA().eval()
    for module in (model.attn.out_proj, model.out):
        with torch.no_grad():
            module.weight[torch.rand_like(module.weight) < 0.9] = 0
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = model(x)
    summary = prunekit.sparsify_(model, format="unstructured")
    assert "attn.out_proj" in summary.skipped and summary.swapped == {"out": "unstructured"}
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_errors_leave_the_model_unchanged():
    with pytest.raises(TypeError, match="argument 'model' must be a torch.nn.Module, but got str"):
        prunekit.sparsify_("model")
    with pytest.raises(ValueError, match=r"argument 'format' must be one of .* but got 'csr'"):
        prunekit.sparsify_(nn.Sequential(nn.Linear(4, 4)), format="csr")
    with pytest.raises(ValueError, match="argument 'model' is itself a Linear"):
        prunekit.sparsify_(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"has no prunable modules .* but got module types \['Embedding', 'ReLU', 'Sequential'\]"):
        prunekit.sparsify_(nn.Sequential(nn.Embedding(4, 4), nn.ReLU()))
    model = pruned_hf("llama", 0.5)  # unstructured: not a 2:4 pattern
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"sparsify_: module 'model.layers.0.self_attn.q_proj' \(Linear\): .*format='2:4' needs at most 2 nonzeros"):
        prunekit.sparsify_(model, format="2:4")
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
