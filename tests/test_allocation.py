"""Allocations: uniform, global (exact total, layer-collapse guard), OWL."""

import pytest
import torch

from prunekit.allocation import (global_allocation, global_prune_counts, outlier_ratio, owl_allocation,
                                 uniform_allocation)


def test_uniform():
    assert uniform_allocation({"a": 10, "b": 20}, 0.3) == {"a": 0.3, "b": 0.3}


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.99])
def test_global_prunes_exactly_the_requested_total(sparsity, generator):
    scores = {"a": torch.rand(7, 9, generator=generator), "b": torch.rand(20, 3, generator=generator) * 3,
              "c": torch.rand(5, 5, generator=generator) * 0.1}
    counts = global_prune_counts(scores, sparsity, min_keep=0.0)
    total = sum(s.numel() for s in scores.values())
    assert sum(counts.values()) == round(sparsity * total)
    # the pruned ones are the globally smallest: every pruned score <= every kept score
    pruned_max, kept_min = -1.0, 2.0 ** 30
    for name, score in scores.items():
        ordered = torch.sort(score.reshape(-1)).values
        if counts[name]:
            pruned_max = max(pruned_max, float(ordered[counts[name] - 1]))
        if counts[name] < score.numel():
            kept_min = min(kept_min, float(ordered[counts[name]]))
    assert pruned_max <= kept_min


def test_global_guards_against_layer_collapse():
    scores = {"small": torch.full((10, 10), 0.01), "large": torch.rand(10, 10) + 1}
    unguarded = global_prune_counts(scores, 0.5, min_keep=0.0)
    assert unguarded["small"] == 100
    guarded = global_prune_counts(scores, 0.5, min_keep=0.1)
    assert guarded == {"small": 90, "large": 10}
    sparsities = global_allocation(scores, 0.5, min_keep=0.1)
    assert sparsities == {"small": 0.9, "large": 0.1}


def test_global_ties_are_exact():
    scores = {"a": torch.ones(4, 4), "b": torch.ones(4, 4)}
    counts = global_prune_counts(scores, 0.5, min_keep=0.0)
    assert sum(counts.values()) == 16


def test_global_unreachable_sparsity_is_an_error():
    with pytest.raises(ValueError, match="min_keep"):
        global_prune_counts({"a": torch.rand(4, 4)}, 0.9, min_keep=0.5)


def test_outlier_ratio():
    scores = [torch.tensor([1.0] * 9 + [100.0])]  # mean 10.9: 100 is above 5 * mean (54.5), not 10 * mean
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.1)
    assert outlier_ratio(scores, 10.0) == 0.0


def test_owl_more_outliers_keep_more_and_mean_is_preserved():
    flat = [torch.ones(100)]
    some = [torch.cat([torch.ones(98), torch.full((2,), 100.0)])]
    many = [torch.cat([torch.ones(90), torch.full((10,), 100.0)])]
    sparsities = owl_allocation({"flat": flat, "some": some, "many": many}, 0.7, outlier_threshold=5.0, lam=0.08)
    assert sparsities["many"] < sparsities["some"] < sparsities["flat"]
    assert sum(sparsities.values()) / 3 == pytest.approx(0.7)
    assert max(sparsities.values()) - min(sparsities.values()) == pytest.approx(0.16)
    weighted = owl_allocation({"flat": flat, "many": many}, 0.5, group_sizes={"flat": 300, "many": 100})
    assert (weighted["flat"] * 300 + weighted["many"] * 100) / 400 == pytest.approx(0.5)


def test_owl_without_outlier_differences_is_uniform():
    same = {"a": [torch.ones(10)], "b": [torch.ones(10)]}
    assert owl_allocation(same, 0.6) == pytest.approx({"a": 0.6, "b": 0.6})
