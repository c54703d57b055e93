"""A criterion registered from outside (scores = |W| * ||X||^2, compared across the layer) prunes
models through prunekit.prune like the built-ins: at 50%, 2:4, with DSnoT, under the global and
OWL allocations; its masks are a hand computation's and differ from Wanda's."""

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit import PruneConfig

from tiny_models import calibration, tiny_model

NAME = "test_squared_input_norms"


def squared_input_norms(weight, stats):
    return weight.abs() * stats.input_norms.square()


squared_input_norms.needs = {"input_norms"}

prunekit.register_criterion(NAME, squared_input_norms)


def run(model, arch="llama", **config):
    # exact errors: these tests compare them across methods and refinements
    return prunekit.prune(model, PruneConfig(progress=False, **{"report_errors": "exact", **config}), calibration(arch))


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach() for name, module in model.named_modules() if isinstance(module, nn.Linear)}


# ----------------------------------------------------------------------------- a hand computation

def tiny_layer():
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 8, generator=generator))
    calib = [torch.randn(5, 8, generator=generator) * torch.arange(1.0, 9.0) for _ in range(3)]
    return model, calib


def hand_scores(weight, calib):
    x = torch.cat(calib).double()
    return weight.double().abs() * x.square().sum(dim=0)


def test_masks_are_the_hand_computation_at_50_percent():
    model, calib = tiny_layer()
    scores = hand_scores(model[0].weight.detach(), calib)
    expected = torch.ones(32, dtype=torch.bool)
    expected[torch.argsort(scores.reshape(-1))[:16]] = False  # the 16 lowest, across the layer
    report = prunekit.prune(model, PruneConfig(method=NAME, sparsity=0.5, progress=False), calib)
    assert torch.equal(model[0].weight != 0, expected.reshape(4, 8))
    assert report.method == NAME and report.layers[0].sparsity == 0.5
    # Wanda (|W| * ||X||, per row) prunes other weights of this layer
    wanda_model, _ = tiny_layer()
    prunekit.prune(wanda_model, PruneConfig(method="wanda", sparsity=0.5, progress=False), calib)
    assert not torch.equal(wanda_model[0].weight != 0, expected.reshape(4, 8))


def test_masks_are_the_hand_computation_at_2_4():
    model, calib = tiny_layer()
    scores = hand_scores(model[0].weight.detach(), calib).reshape(4, 2, 4)
    expected = torch.zeros(4, 2, 4, dtype=torch.bool)
    expected.scatter_(2, scores.topk(2, dim=2).indices, True)  # the 2 highest of every 4 inputs
    prunekit.prune(model, PruneConfig(method=NAME, sparsity="2:4", progress=False), calib)
    assert torch.equal(model[0].weight != 0, expected.reshape(4, 8))


# ----------------------------------------------------------------------------- a model

@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_prunes_a_model(sparsity):
    model = tiny_model("llama")
    report = run(model, method=NAME, sparsity=sparsity, ignore=["lm_head"])
    wanda = tiny_model("llama")
    run(wanda, method="wanda", sparsity=sparsity, ignore=["lm_head"])
    weights, wanda_weights = linear_weights(model), linear_weights(wanda)
    del weights["lm_head"], wanda_weights["lm_head"]
    assert report.method == NAME and len(report.layers) == len(weights)
    for name, weight in weights.items():
        if sparsity == 0.5:
            assert int((weight == 0).sum()) == weight.numel() // 2, name
        else:
            assert ((weight.reshape(-1, 4) == 0).sum(-1) == 2).all(), name
    assert any(not torch.equal(weights[n] == 0, wanda_weights[n] == 0) for n in weights)
    assert all(0 < layer.reconstruction_error < 1 for layer in report.layers)


@pytest.mark.parametrize("sparsity", [0.6, "2:4"])
def test_dsnot_refines_its_masks(sparsity):
    # One-shot, so that each layer sees the same inputs with and without refinement.
    base = run(tiny_model("llama"), method=NAME, sparsity=sparsity, sequential=False)
    refined_model = tiny_model("llama")
    refined = run(refined_model, method=NAME, sparsity=sparsity, sequential=False, refine="dsnot")
    assert refined.refine == "dsnot" and refined.total_sparsity == base.total_sparsity
    for before, after in zip(base.layers, refined.layers):
        assert after.sparsity == before.sparsity
        assert after.reconstruction_error <= before.reconstruction_error * (1 + 1e-5) + 1e-9, after.name
    assert refined.total_reconstruction_error < base.total_reconstruction_error
    if sparsity == "2:4":
        for weight in linear_weights(refined_model).values():
            assert ((weight.reshape(-1, 4) == 0).sum(-1) == 2).all()


def test_global_allocation():
    model = tiny_model("llama")
    report = run(model, method=NAME, sparsity=0.7, allocation="global", ignore=["lm_head"])
    reference = run(tiny_model("llama"), method="global_magnitude", sparsity=0.7, ignore=["lm_head"])
    weights = linear_weights(model)
    del weights["lm_head"]
    total = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == round(0.7 * total)
    assert report.allocation == "global"
    # one |W| threshold decides how many each layer prunes; the criterion decides which
    assert [l.sparsity for l in report.layers] == [l.sparsity for l in reference.layers]
    assert len({round(layer.sparsity, 3) for layer in report.layers}) > 1


def test_owl_allocation():
    model = tiny_model("llama", outliers=False)
    attention = model.model.layers[1].self_attn
    with torch.no_grad():  # make block 1 much more outlier-heavy than block 0
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.weight[:, :8] *= 10
    reference_model = tiny_model("llama", outliers=False)
    reference_model.load_state_dict(model.state_dict())
    report = run(model, method=NAME, sparsity=0.7, allocation="owl", owl_lambda=0.1, ignore=["lm_head"])
    reference = run(reference_model, method="wanda", sparsity=0.7, allocation="owl", owl_lambda=0.1,
                    ignore=["lm_head"])
    targets = {layer.block: layer.target_sparsity for layer in report.layers}
    assert targets["model.layers.0"] - targets["model.layers.1"] == pytest.approx(0.2)
    # the block sparsities come from the dense model's outliers, whatever the criterion
    assert [l.target_sparsity for l in report.layers] == [l.target_sparsity for l in reference.layers]
    assert report.total_sparsity == pytest.approx(0.7, abs=1e-3)


# ----------------------------------------------------------------------------- declared facts

def test_per_row_criterion_prunes_each_row_alike():
    def squared_per_row(weight, stats):
        return weight.abs() * stats.input_norms.square()

    squared_per_row.needs = {"input_norms"}
    squared_per_row.per_row = True
    model, calib = tiny_layer()
    scores = hand_scores(model[0].weight.detach(), calib)
    report = prunekit.prune(model, PruneConfig(method=squared_per_row, sparsity=0.5, progress=False), calib)
    assert report.method == "squared_per_row"
    pruned = model[0].weight == 0
    assert (pruned.sum(dim=1) == 4).all()
    # within each row, every pruned score is below every kept one
    assert (scores[pruned].reshape(4, 4).max(dim=1).values < scores[~pruned].reshape(4, 4).min(dim=1).values).all()


def test_a_data_free_criterion_needs_no_calibration():
    class Smallest:
        name = "test_smallest_first"
        needs = frozenset()

        def __call__(self, weight, stats):
            return weight.abs()

    model = tiny_model("opt")
    report = prunekit.prune(model, PruneConfig(method=Smallest(), sparsity=0.5, progress=False), None)
    reference = prunekit.prune(tiny_model("opt"), PruneConfig(method="magnitude", sparsity=0.5, progress=False), None)
    assert report.method == "test_smallest_first" and report.total_reconstruction_error is None
    assert [l.sparsity for l in report.layers] == [l.sparsity for l in reference.layers]


def test_the_gradient_pass_runs_only_for_criteria_that_need_gradients():
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return model(**batch.kwargs).logits.square().mean()

    def gradient_weighted(weight, stats):
        return weight.abs() * stats.gradients

    gradient_weighted.needs = {"gradients"}
    run(tiny_model("llama"), method="wanda", loss_fn=loss_fn)
    assert calls == []
    model = tiny_model("llama")
    report = run(model, method=gradient_weighted, loss_fn=loss_fn, sparsity=0.5)
    assert len(calls) == len(calibration("llama"))
    assert report.total_sparsity == pytest.approx(0.5)
    assert all(p.grad is None for p in model.parameters())


def test_reading_an_undeclared_statistic_is_an_error():
    def sneaky(weight, stats):
        return weight.abs() * torch.diagonal(stats.hessian)

    sneaky.needs = {"input_norms"}
    model, calib = tiny_layer()
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"criterion 'sneaky' \(0\): stats.hessian: expected 'hessian' in the "
                                         r"criterion's declared needs, but they are \['input_norms'\]"):
        prunekit.prune(model, PruneConfig(method=sneaky, progress=False), calib)
    assert torch.equal(model[0].weight, before)


def test_scores_of_another_shape_are_an_error():
    def per_column(weight, stats):
        return stats.input_norms

    per_column.needs = {"input_norms"}
    model, calib = tiny_layer()
    with pytest.raises(ValueError, match=r"criterion 'per_column' \(0\): expected scores as a floating tensor of the "
                                         r"weight's shape \(4, 8\), but got torch.float32 \(8,\)"):
        prunekit.prune(model, PruneConfig(method=per_column, progress=False), calib)
