"""The score criteria (solvers/{magnitude,wanda,gblm,random}.py): golden values, per-row versus
per-layer comparison, seeding."""

import torch

from prunekit.calibrate import HessianAccumulator
from prunekit.solvers import gblm, input_norms_from_hessian, magnitude, random, wanda


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


def test_magnitude_prunes_the_smallest_of_the_whole_layer(generator):
    weight = torch.randn(32, 48, generator=generator)
    pruned, keep = magnitude(weight, sparsity=0.6)
    assert weight.abs()[~keep].max() <= weight.abs()[keep].min()
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
