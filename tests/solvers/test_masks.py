"""Keep-masks from scores (solvers/masks.py): exact counts, N:M validity, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import ops
from prunekit.solvers import magnitude, parse_pattern, select_mask, wanda, wanda_scores
from prunekit.ops._reference import lowest_pruned_keep
from prunekit.solvers.masks import keep_lowest_pruned, keep_lowest_pruned_per_row


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


@pytest.mark.parametrize("pattern", ["2:4", (1, 4), "4:8", "1:2"])
def test_nm_masks_are_valid_and_match_the_op(pattern, generator):
    weight = torch.randn(16, 64, generator=generator)
    n, m = parse_pattern(pattern)
    norms = torch.rand(64, generator=generator)
    for pruned, keep, scores in (
        (*magnitude(weight, pattern=pattern), weight.abs()),
        (*wanda(weight, norms, pattern=pattern), wanda_scores(weight, norms)),
    ):
        assert (keep.reshape(16, -1, m).sum(-1) == n).all()
        assert torch.equal(keep, ops.nm_mask(scores.contiguous(), n, m))
        assert torch.equal(pruned, weight * keep)


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


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), levels=st.integers(1, 6), fraction=st.floats(0, 1),
       per_row=st.booleans(), seed=st.integers(0, 2**31 - 1), negative_zero=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       spread=st.sampled_from([0.0, 1e-3, 1e30]))
def test_selection_equals_a_stable_sort_with_ties(rows, cols, levels, fraction, per_row, seed, negative_zero, dtype,
                                                  spread):
    # Few distinct levels (of both signs) force ties at the threshold; -0.0 and 0.0 compare equal
    # as in a sort. Rows wider than 16 take the radix selection, narrower ones the rank count.
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(-levels, levels, (rows, cols), generator=generator).to(torch.float64)
    scores = (scores * (1 + spread * torch.rand(rows, cols, dtype=torch.float64, generator=generator))).to(dtype)
    if negative_zero:
        scores[(scores == 0) & (torch.rand(rows, cols, generator=generator) < 0.5)] = -0.0
    count = int(round(fraction * rows * cols))
    select = keep_lowest_pruned_per_row if per_row else keep_lowest_pruned
    assert torch.equal(select(scores, count), lowest_pruned_keep(scores, count, per_row))


def test_selection_of_integer_bool_and_nan_scores_is_the_stable_sorts():
    # Integer and bool scores and NaN (last, as a sort orders it) take the stable sort's path.
    scores = torch.tensor([[3.0, float("nan"), 1.0, 2.0, float("nan"), 0.5]])
    infinite = torch.tensor([[3.0, float("inf"), 1.0, -float("inf"), 2.0, 0.5]])
    for count in range(7):
        assert torch.equal(keep_lowest_pruned(scores, count), lowest_pruned_keep(scores, count, False))
        assert torch.equal(keep_lowest_pruned(infinite, count), lowest_pruned_keep(infinite, count, False))
    generator = torch.Generator().manual_seed(0)
    for scores in (torch.randint(0, 4, (5, 9), generator=generator), torch.rand(5, 9, generator=generator) > 0.5):
        for count in (7, 22, 45):
            assert torch.equal(keep_lowest_pruned_per_row(scores, count), lowest_pruned_keep(scores, count, True))
            assert torch.equal(keep_lowest_pruned(scores, count), lowest_pruned_keep(scores, count, False))
