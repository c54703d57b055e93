"""The RIA criterion (prunekit.solvers.ria, method="ria"): the paper's score, exact masks per row
and N:M, its power option, bad input, and a prune run."""

import pytest
import torch

import prunekit
from prunekit import PruneConfig
from prunekit.solvers.ria import ria, ria_scores

from tiny_models import calibration, tiny_model


def test_scores_follow_the_formula():
    weight = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, -1.0]])
    norms = torch.tensor([4.0, 1.0, 9.0])
    scores = ria_scores(weight, norms, 0.5)
    for i in range(2):
        for j in range(3):
            value = abs(weight[i, j].item())
            row = weight[i].abs().sum().item()
            column = weight[:, j].abs().sum().item()
            expected = (value / row + value / column) * norms[j].item() ** 0.5
            assert scores[i, j].item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(ria_scores(weight, norms, 1.0), (scores / norms.sqrt()) * norms)


def test_zero_rows_and_columns_score_zero():
    weight = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    scores = ria_scores(weight, torch.ones(2))
    assert bool(torch.isfinite(scores).all()) and scores[0].abs().sum() == 0 and scores[1, 0] == 2.0


@pytest.mark.parametrize("sparsity,pattern", [(0.0, None), (0.5, None), (0.9, None), (None, "2:4"), (None, "4:8")])
@pytest.mark.parametrize("shape", [(8, 32), (13, 24)])
def test_masks_are_exact(sparsity, pattern, shape):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(*shape, generator=generator)
    norms = torch.rand(shape[1], generator=generator) * 5
    pruned, keep = ria(weight, norms, sparsity=sparsity, pattern=pattern)
    assert torch.equal(pruned, weight * keep)
    if pattern is None:
        assert int((~keep).sum()) == round(sparsity * weight.numel())
    else:
        n, m = map(int, pattern.split(":"))
        assert bool((keep.reshape(-1, m).sum(1) == n).all())


def test_differs_from_wanda_where_a_column_dominates():
    # Column 0 holds large weights in every row: relative to its column each is small, so RIA
    # prunes it where Wanda (|W| * ||X||) keeps it.
    weight = torch.tensor([[5.0, 1.0], [5.0, 0.01], [5.0, 0.01], [5.0, 0.01]])
    _, keep = ria(weight, torch.ones(2), sparsity=0.5)
    assert bool(keep[0, 1]) and not bool(keep[0, 0])


def test_bad_input():
    weight = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"ria: input_norms must have shape \(8,\) to match weight \(4, 8\), but "
                                         r"got \(7,\)"):
        ria_scores(weight, torch.ones(7))
    with pytest.raises(ValueError, match=r"ria_power: expected a number in \[0, 4\] \(the paper uses 0.5\), but "
                                         r"got -1"):
        ria_scores(weight, torch.ones(8), -1)
    with pytest.raises(ValueError, match=r"PruneConfig.ria_power: expected a number in \[0, 4\]"):
        PruneConfig(method="ria", ria_power=float("nan"))
    with pytest.raises(ValueError, match=r"importance scores hold NaN or Inf"):
        ria(weight, torch.full((8,), float("nan")), sparsity=0.5, name="q")


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_prune_with_ria(sparsity):
    model = tiny_model("llama")
    report = prunekit.prune(model, PruneConfig(method="ria", sparsity=sparsity, ignore=["lm_head"], progress=False),
                            calibration("llama"))
    assert report.method == "ria"
    for layer in report.layers:
        assert layer.sparsity == pytest.approx(0.5, abs=1e-6), layer.name
    weight = model.model.layers[0].mlp.down_proj.weight.detach()
    if sparsity == "2:4":
        assert bool(((weight.reshape(-1, 4) != 0).sum(1) == 2).all())
    else:
        assert int((weight == 0).sum()) == weight.numel() // 2
    changed = tiny_model("llama")
    prunekit.prune(changed, PruneConfig(method="ria", sparsity=sparsity, ria_power=1.0, ignore=["lm_head"],
                                        progress=False), calibration("llama"))
    assert not torch.equal(changed.model.layers[0].mlp.down_proj.weight, weight)
