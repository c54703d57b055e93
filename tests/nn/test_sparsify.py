"""prunekit.sparsify_ after prunekit.prune: tiny Hugging Face models of four architectures and two
CNNs match their masked dense selves; the report; what is skipped; errors leave the model as is;
SparsifyConfig; the deprecated call before it still works, warns and does the same."""

import copy
import json
import warnings

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit import PruneConfig
from prunekit.nn import SparseConv2d, SparseLinear
from prunekit.surgery import SparsifyConfig, SparsifyReport

from cnn_models import CNN_ARCHITECTURES, cnn_calibration, cnn_model
from tiny_models import calibration, tiny_model

HF_ARCHITECTURES = ["llama", "opt", "gpt2", "bert"]


@pytest.fixture(autouse=True)
def avx512_auto_tables(monkeypatch):
    """The "auto" cases here are those of the AVX-512 break-even table; "auto" takes the table of
    the kind of CPU kernels that runs (tests/nn/test_auto_isa.py), so pin that kind."""
    from prunekit.nn import auto

    monkeypatch.setattr(auto, "cpu_kernel_kind", lambda: "avx512")


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
    summary = prunekit.sparsify_(model, SparsifyConfig(format=fmt(sparsity)))
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
    summary = prunekit.sparsify_(model, SparsifyConfig(format=fmt(sparsity)))
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
    summary = prunekit.sparsify_(llama, SparsifyConfig(rows=1))  # one token per call: 2:4 pays
    assert set(summary.swapped.values()) == {"2:4"} and "lm_head" in summary.swapped


def test_summary_and_auto_choices():
    model = pruned_hf("llama", 0.5)
    with torch.no_grad():  # one layer barely pruned: auto keeps it dense
        model.model.layers[0].mlp.down_proj.weight.normal_()
        model.model.layers[0].mlp.down_proj.weight[0, :3] = 0
    before = prunekit.surgery.model_bytes(model)
    assert not prunekit.sparsify_(copy.deepcopy(model)).swapped  # 50%: below the break-even at 16 rows
    summary = prunekit.sparsify_(model, SparsifyConfig(break_even=0.4))
    assert summary.bytes_before == before and summary.bytes_after == prunekit.surgery.model_bytes(model)
    assert "model.layers.0.mlp.down_proj" in summary.kept_dense
    assert "break-even" in summary.kept_dense["model.layers.0.mlp.down_proj"]
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    assert summary.swapped_bytes_after < 0.75 * summary.swapped_bytes_before
    text = str(summary)
    assert "swapped" in text and "unstructured" in text
    assert summary.to_dict()["ratio"] == pytest.approx(summary.bytes_after / summary.bytes_before)
    again = prunekit.sparsify_(model, SparsifyConfig(break_even=0.4))  # idempotent: sparse modules are not prunable
    assert not again.swapped


def test_filter_fn_and_explicit_formats():
    model = pruned_hf("opt", "2:4")
    summary = prunekit.sparsify_(model, SparsifyConfig(format="unstructured"), filter_fn=lambda m, fqn: "fc" in fqn)
    assert summary.swapped and all("fc" in n for n in summary.swapped)
    assert all(reason == "filtered out by filter_fn" for reason in summary.skipped.values())
    dense_model = pruned_hf("opt", 0.5)
    summary = prunekit.sparsify_(dense_model, SparsifyConfig(format="dense"))
    assert set(summary.swapped.values()) == {"dense"}


def test_tied_weights_and_multihead_attention_are_skipped():
    model = tiny_model("llama")
    model.lm_head.weight = model.model.embed_tokens.weight
    with torch.no_grad():
        model.lm_head.weight[:, 0] = 0
    summary = prunekit.sparsify_(model, SparsifyConfig(format="unstructured"))
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
    summary = prunekit.sparsify_(model, SparsifyConfig(format="unstructured"))
    assert "attn.out_proj" in summary.skipped and summary.swapped == {"out": "unstructured"}
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_errors_leave_the_model_unchanged():
    with pytest.raises(TypeError, match="argument 'model' must be a torch.nn.Module, but got str"):
        prunekit.sparsify_("model")
    with pytest.raises(ValueError, match=r"SparsifyConfig: argument 'format' must be one of .* but got 'csr'"):
        prunekit.sparsify_(nn.Sequential(nn.Linear(4, 4)), SparsifyConfig(format="csr"))
    with pytest.raises(ValueError, match="argument 'model' is itself a Linear"):
        prunekit.sparsify_(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"has no prunable modules .* but got module types \['Embedding', 'ReLU', "
                                         r"'Sequential'\]"):
        prunekit.sparsify_(nn.Sequential(nn.Embedding(4, 4), nn.ReLU()))
    model = pruned_hf("llama", 0.5)  # unstructured: not a 2:4 pattern
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"sparsify_: module 'model.layers.0.self_attn.q_proj' \(Linear\): "
                                         r".*format='2:4' needs at most 2 nonzeros"):
        prunekit.sparsify_(model, SparsifyConfig(format="2:4"))
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- the API: new and deprecated

def mlp_linears(model) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and "mlp" in name}


def test_filter_fn_in_torchaos_order_swaps_exactly_the_mlp_linears():
    model = tiny_model("llama")  # attention (q/k/v/o_proj) and MLP (gate/up/down_proj) linears
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = mlp_linears(model)
    attention = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and "self_attn" in name}
    assert expected and attention
    seen = []

    def only_mlp(module, fqn):
        seen.append((type(module).__name__, fqn))
        return "mlp" in fqn

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new call does not warn
        report = prunekit.sparsify_(model, SparsifyConfig(format="unstructured"), filter_fn=only_mlp)
    assert isinstance(report, SparsifyReport)
    assert set(report.swapped) == expected and set(report.swapped.values()) == {"unstructured"}
    assert {n for n, m in model.named_modules() if isinstance(m, SparseLinear)} == expected
    assert all(isinstance(model.get_submodule(name), nn.Linear) for name in attention)
    assert {fqn for _, fqn in seen} >= attention | expected and {kind for kind, _ in seen} == {"Linear"}
    assert all(report.skipped[name] == "filtered out by filter_fn" for name in attention)
    for name in expected:  # lossless
        assert torch.equal(model.get_submodule(name).to_dense().weight, state[f"{name}.weight"])
    # The same with the lambda of the issue.
    again = tiny_model("llama")
    report_again = prunekit.sparsify_(again, SparsifyConfig(format="unstructured"),
                                      filter_fn=lambda m, fqn: "mlp" in fqn)
    assert set(report_again.swapped) == expected


def _same_result(old_model, old_report, new_model, new_report):
    assert old_report.to_dict() == new_report.to_dict()
    assert [type(m) for m in old_model.modules()] == [type(m) for m in new_model.modules()]
    new_state = new_model.state_dict()
    assert all(torch.equal(tensor, new_state[key]) for key, tensor in old_model.state_dict().items())


@pytest.mark.parametrize("call", ["positional", "keyword", "names", "third_positional"])
def test_the_old_call_still_works_warns_and_gives_the_same_result(call):
    """The old call, filter_fn(name, module) and format=... (here 'names': only filter_fn=f, no
    config, f's parameters named name and module; "auto", so the new call has no config either)."""
    new_model, old_model = tiny_model("llama"), tiny_model("llama")
    expected = mlp_linears(old_model)
    config = SparsifyConfig() if call == "names" else SparsifyConfig(format="unstructured")
    new_report = prunekit.sparsify_(new_model, config, filter_fn=lambda m, fqn: "mlp" in fqn)
    options = "" if call == "names" else "format='unstructured'"
    with pytest.deprecated_call(match=rf"sparsify_\(model, SparsifyConfig\({options}\), filter_fn=f\) "
                                      r"with f\(module, fqn\)"):
        if call == "positional":
            old_report = prunekit.sparsify_(old_model, lambda name, module: "mlp" in name, format="unstructured")
        elif call == "keyword":
            old_report = prunekit.sparsify_(old_model, filter_fn=lambda n, m: "mlp" in n, format="unstructured")
        elif call == "names":
            old_report = prunekit.sparsify_(old_model, filter_fn=lambda name, module: "mlp" in name
                                            and isinstance(module, nn.Linear))
        else:
            old_report = prunekit.sparsify_(old_model, lambda name, module: "mlp" in name, "unstructured")
    if call == "names":  # not pruned: "auto" keeps the selected linears dense
        assert set(old_report.kept_dense) == expected
    else:
        assert set(old_report.swapped) == expected
    _same_result(old_model, old_report, new_model, new_report)


def test_old_keywords_alone_warn_and_match_the_config():
    new_model, old_model = pruned_hf("llama", "2:4"), pruned_hf("llama", "2:4")
    new_report = prunekit.sparsify_(new_model, SparsifyConfig(rows=1))
    with pytest.deprecated_call(match=r"SparsifyConfig\(rows=1\)"):
        old_report = prunekit.sparsify_(old_model, rows=1)
    assert new_report.swapped
    _same_result(old_model, old_report, new_model, new_report)
    with pytest.deprecated_call(match=r"SparsifyConfig\(break_even=0.4, rows=3\)"):
        prunekit.sparsify_(pruned_hf("llama", 0.5), break_even=0.4, rows=3)


def test_a_filter_without_the_old_names_is_called_in_torchaos_order():
    model = tiny_model("llama")
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prunekit.sparsify_(model, filter_fn=lambda m, fqn: calls.append((m, fqn)) or False)
    assert calls and all(isinstance(m, nn.Module) and isinstance(fqn, str) for m, fqn in calls)
    # With a config the call is the new one whatever the names: f(module, fqn).
    received = []
    prunekit.sparsify_(model, SparsifyConfig(), filter_fn=lambda name, module: received.append(name) or False)
    assert received and all(isinstance(first, nn.Module) for first in received)


def test_bad_calls_and_configs_are_clear_errors():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="argument 'config' must be a SparsifyConfig or None, but got str"):
        prunekit.sparsify_(model, "unstructured")
    with pytest.raises(TypeError, match=r"either as config=SparsifyConfig\(...\) or as the deprecated keywords "
                                        r"\['format'\]"):
        prunekit.sparsify_(model, SparsifyConfig(), format="dense")
    with pytest.raises(TypeError, match="argument 'filter_fn' must be callable"):
        prunekit.sparsify_(model, SparsifyConfig(), filter_fn=3)
    with pytest.raises(TypeError, match="got two filters"):
        prunekit.sparsify_(model, lambda name, module: True, filter_fn=lambda m, fqn: True)
    with pytest.raises(TypeError, match="got the format twice"):
        prunekit.sparsify_(model, None, "dense", format="dense")
    for kwargs, message in [
        (dict(format="csr"), r"argument 'format' must be one of \('auto', '2:4', 'unstructured', 'dense'\), but "
                             r"got 'csr'"),
        (dict(rows=0), r"argument 'rows' must be an int >= 1 or None, but got 0"),
        (dict(rows=2.5), r"argument 'rows' must be an int >= 1 or None, but got 2.5"),
        (dict(rows=True), r"argument 'rows' must be an int >= 1 or None, but got True"),
        (dict(break_even=1.5), r"argument 'break_even' must be a number in \[0, 1\] or None, but got 1.5"),
        (dict(break_even="0.5"), r"argument 'break_even' must be a number in \[0, 1\] or None, but got '0.5'"),
    ]:
        with pytest.raises(ValueError, match="SparsifyConfig: " + message):
            SparsifyConfig(**kwargs)
    assert SparsifyConfig() == SparsifyConfig(format="auto", rows=None, break_even=None)


def test_report_and_the_deprecated_summary_name():
    model = pruned_hf("llama", 0.9)
    model.lm_head.weight = model.model.embed_tokens.weight
    report = prunekit.sparsify_(model, SparsifyConfig(format="unstructured"))
    text = report.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["module", "result", "note"]
    assert any(line.startswith("model.layers.0.mlp.up_proj") and "unstructured" in line for line in lines)
    assert any(line.startswith("lm_head") and "skipped" in line and "weight shared" in line for line in lines)
    assert lines[-2:] == str(report).splitlines()
    data = json.loads(report.to_json())
    assert data == json.loads(json.dumps(report.to_dict())) and data["ratio"] == pytest.approx(report.ratio)
    with pytest.deprecated_call(match="SparsifySummary is deprecated: use prunekit.SparsifyReport"):
        from prunekit.surgery import SparsifySummary
    assert SparsifySummary is SparsifyReport
    assert prunekit.SparsifyReport is SparsifyReport and prunekit.SparsifyConfig is SparsifyConfig
    assert {"SparsifyConfig", "SparsifyReport", "sparsify_"} <= set(prunekit.__all__)
    with pytest.deprecated_call(match="SparsifySummary is deprecated"):
        assert prunekit.surgery.sparsify.SparsifySummary is SparsifyReport
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        prunekit.surgery.Nothing  # noqa: B018
