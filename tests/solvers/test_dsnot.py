"""DSnoT refinement: counts and N:M validity kept, the mean reconstruction error reduced."""

import pytest
import torch

from prunekit.solvers import dsnot, wanda


def statistics(generator, rows=64, cols=128, samples=512):
    # inputs with non-zero means, as after GELU/SiLU or attention
    x = torch.randn(samples, cols, generator=generator) + torch.rand(cols, generator=generator) * 2
    return x, x.mean(0), x.var(0, unbiased=False), x.norm(dim=0), torch.randn(rows, cols, generator=generator)


def mean_error(weight, keep, mean):
    return ((weight * ~keep) * mean).sum(dim=1).abs()


@pytest.mark.parametrize("pattern", [None, "2:4", "4:8"])
def test_dsnot_keeps_counts_and_reduces_the_mean_error(pattern, generator):
    x, mean, var, norms, weight = statistics(generator)
    _, keep = wanda(weight, norms, sparsity=None if pattern else 0.6, pattern=pattern)
    refined = dsnot(weight, keep, mean, var, norms, pattern=pattern, threshold=0.0)
    assert torch.equal(refined.sum(dim=1), keep.sum(dim=1))
    if pattern is not None:
        n, m = map(int, pattern.split(":"))
        assert (refined.reshape(64, -1, m).sum(-1) == n).all()
    assert not torch.equal(refined, keep)
    before, after = mean_error(weight, keep, mean), mean_error(weight, refined, mean)
    assert (after <= before + 1e-5).all()
    assert after.mean() < (0.5 if pattern is None else 0.8) * before.mean()
    # and the output reconstruction error on the data improves
    output = x @ weight.t()
    assert (x @ (weight * refined).t() - output).square().sum() < (x @ (weight * keep).t() - output).square().sum()


def test_dsnot_with_zero_cycles_is_the_identity(generator):
    _, mean, var, norms, weight = statistics(generator)
    _, keep = wanda(weight, norms, sparsity=0.5)
    assert torch.equal(dsnot(weight, keep, mean, var, norms, max_cycles=0), keep)


def test_dsnot_checks_shapes(generator):
    _, mean, var, norms, weight = statistics(generator)
    with pytest.raises(ValueError, match="input_mean"):
        dsnot(weight, torch.ones_like(weight, dtype=torch.bool), mean[:-1], var, norms)
