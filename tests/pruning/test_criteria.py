"""Criteria: golden values, exact counts, N:M validity, errors."""

import pytest
import torch

from prunekit import ops
from prunekit.calibrate import HessianAccumulator
from prunekit.solvers import (gblm, input_norms_from_hessian, magnitude, random, select_mask, wanda,
                              wanda_scores)


def kept_values(weight, keep):
    return weight[keep].tolist()


def test_wanda_golden_24_with_unit_inputs():
    weight = torch.arange(1.0, 9.0).reshape(1, 8)
    inputs = torch.ones(5, 8)
    accumulator = HessianAccumulator(8)
    accumulator.add(inputs)
    norms = input_norms_from_hessian(accumulator.hessian, accumulator.n_samples)
    torch.testing.assert_close(norms, torch.full((8,), 5.0 ** 0.5))
    pruned, keep = wanda(weight, norms, pattern="2:4")
    assert kept_values(weight, keep) == [3.0, 4.0, 7.0, 8.0]
    assert pruned.tolist() == [[0, 0, 3, 4, 0, 0, 7, 8]]


def test_wanda_golden_input_norms_outweigh_magnitude():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    pruned, keep = wanda(weight, torch.tensor([100.0, 10.0, 1.0, 0.1]), sparsity=0.5)
    assert kept_values(weight, keep) == [1.0, 2.0]
    # magnitude alone keeps the opposite half
    _, keep_magnitude = magnitude(weight, sparsity=0.5)
    assert kept_values(weight, keep_magnitude) == [3.0, 4.0]


def test_wanda_compares_within_rows():
    # Row 0 has all the large weights; per-row comparison still prunes half of every row.
    weight = torch.cat([torch.full((1, 8), 10.0) + torch.arange(8.0), torch.arange(8.0).reshape(1, 8) * 0.01])
    _, keep = wanda(weight, torch.ones(8), sparsity=0.5)
    assert keep.sum(dim=1).tolist() == [4, 4]
    _, keep_layer = magnitude(weight, sparsity=0.5)
    assert keep_layer.sum(dim=1).tolist() == [8, 0]


@pytest.mark.parametrize("shape", [(7, 13), (16, 64), (3, 5), (33, 96)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.95])
def test_exact_counts_per_layer(shape, sparsity, generator):
    weight = torch.randn(shape, generator=generator)
    expected = round(sparsity * weight.numel())
    for per_row in (False, True):
        keep = select_mask(weight.abs(), sparsity=sparsity, per_row=per_row)
        assert int((~keep).sum()) == expected
    _, keep = wanda(weight, torch.rand(shape[1], generator=generator) + 0.1, sparsity=sparsity)
    assert int((~keep).sum()) == expected


def test_per_row_extra_prunes_go_to_rows_with_smallest_next_score():
    scores = torch.tensor([[1.0, 5.0, 9.0], [2.0, 3.0, 9.0]])
    keep = select_mask(scores, sparsity=0.5, per_row=True)  # 3 prunes: one per row, one extra
    # row 1's next candidate (3) is below row 0's (5)
    assert keep.tolist() == [[False, True, True], [False, False, True]]


def test_magnitude_prunes_the_smallest_of_the_whole_layer(generator):
    weight = torch.randn(32, 48, generator=generator)
    pruned, keep = magnitude(weight, sparsity=0.6)
    assert weight.abs()[~keep].max() <= weight.abs()[keep].min()
    assert torch.equal(pruned, weight * keep)


@pytest.mark.parametrize("pattern", ["2:4", (1, 4), "4:8", "1:2"])
def test_nm_masks_are_valid_and_match_the_op(pattern, generator):
    weight = torch.randn(16, 64, generator=generator)
    n, m = (2, 4) if pattern == "2:4" else (pattern if isinstance(pattern, tuple) else tuple(map(int, pattern.split(":"))))
    norms = torch.rand(64, generator=generator)
    for pruned, keep, scores in (
        (*magnitude(weight, pattern=pattern), weight.abs()),
        (*wanda(weight, norms, pattern=pattern), wanda_scores(weight, norms)),
    ):
        assert (keep.reshape(16, -1, m).sum(-1) == n).all()
        assert torch.equal(keep, ops.nm_mask(scores.contiguous(), n, m))
        assert torch.equal(pruned, weight * keep)


def test_random_is_seeded_and_exact():
    weight = torch.randn(20, 30)
    _, keep_a = random(weight, sparsity=0.3, generator=torch.Generator().manual_seed(3))
    _, keep_b = random(weight, sparsity=0.3, generator=torch.Generator().manual_seed(3))
    _, keep_c = random(weight, sparsity=0.3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(keep_a, keep_b) and not torch.equal(keep_a, keep_c)
    assert int((~keep_a).sum()) == round(0.3 * 600)


def test_gblm_gradient_term_changes_the_decision():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    norms = torch.tensor([4.0, 3.0, 2.0, 1.0])
    gradients = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    _, keep_without = gblm(weight, norms, torch.zeros_like(weight), sparsity=0.5)
    _, keep_with = gblm(weight, norms, gradients, sparsity=0.5, gradient_scale=100.0)
    assert keep_without.tolist() == [[True, True, False, False]]
    assert keep_with.tolist() == [[True, False, False, True]]


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "half", None.__class__])
def test_bad_sparsity_is_a_value_error(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        magnitude(torch.randn(4, 4), sparsity=sparsity)


def test_nm_needs_divisible_inputs_and_consistent_sparsity():
    with pytest.raises(ValueError, match="multiple of m=4"):
        magnitude(torch.randn(4, 6), pattern="2:4")
    with pytest.raises(ValueError, match="contradicts"):
        magnitude(torch.randn(4, 8), pattern="2:4", sparsity=0.7)


def test_non_finite_scores_are_rejected():
    weight = torch.randn(4, 8)
    with pytest.raises(ValueError, match="NaN"):
        wanda(weight, torch.tensor([float("nan")] + [1.0] * 7), sparsity=0.5)
