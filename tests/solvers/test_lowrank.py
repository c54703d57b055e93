"""EoRA low-rank compensation: the fitted factors against a brute-force optimum, the rank rule
of LowRank, and bad input."""

import pytest
import torch

from prunekit.solvers.lowrank import LowRank, eigenspace, eora_factors, lowrank_error_terms


def _problem(out_features=24, in_features=40, rows=200, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=generator, dtype=torch.float64)
    x = x * torch.linspace(0.05, 3.0, in_features, dtype=torch.float64)  # anisotropic inputs
    hessian = 2 * x.T @ x / rows
    dense = torch.randn(out_features, in_features, generator=generator, dtype=torch.float64)
    pruned = dense * (torch.rand(out_features, in_features, generator=generator, dtype=torch.float64) > 0.5)
    return x, hessian, dense.to(dtype), pruned.to(dtype)


def _output_error(x, dense, corrected):
    return float(((x @ (dense.double() - corrected.double()).T) ** 2).sum())


@pytest.mark.parametrize("rank", [1, 4, 17])
def test_eora_matches_the_optimal_output_error(rank):
    x, hessian, dense, pruned = _problem(dtype=torch.float64)
    factor_a, factor_b = eora_factors(dense, pruned, hessian, rank, eigenvalue_floor=1e-12)
    assert factor_a.shape == (rank, 40) and factor_b.shape == (24, rank)
    corrected = pruned + factor_b @ factor_a
    # The optimum of min ||X (dW - M)^T|| over rank-r M: the truncated SVD of X dW^T, mapped back by X^+.
    delta = dense - pruned
    left, singular, right = torch.linalg.svd(x @ delta.T, full_matrices=False)
    best_outputs = (left[:, :rank] * singular[:rank]) @ right[:rank]
    optimum = float(((x @ delta.T - best_outputs) ** 2).sum())
    assert _output_error(x, dense, corrected) == pytest.approx(optimum, rel=1e-8, abs=1e-8)
    # And it beats a plain SVD of dW, which ignores the inputs.
    plain_left, plain_singular, plain_right = torch.linalg.svd(delta, full_matrices=False)
    plain = pruned + (plain_left[:, :rank] * plain_singular[:rank]) @ plain_right[:rank]
    assert _output_error(x, dense, corrected) < _output_error(x, dense, plain)


def test_full_rank_recovers_the_dense_outputs_and_error_terms_shrink():
    x, hessian, dense, pruned = _problem()
    errors = []
    for rank in (1, 8, 24):
        factor_a, factor_b = eora_factors(dense, pruned, hessian.float(), rank)
        assert factor_a.dtype == torch.float32
        numerator, denominator = lowrank_error_terms(dense, pruned + factor_b @ factor_a, hessian)
        errors.append(numerator / denominator)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6  # rank min(out, in): the whole error
    before, _ = lowrank_error_terms(dense, pruned, hessian)
    assert errors[0] * _ < before


def test_zero_error_gives_zero_factors_and_shared_eigenspace():
    _, hessian, dense, _ = _problem()
    eigen = eigenspace(hessian, 1e-6, "layer")
    factor_a, factor_b = eora_factors(dense, dense.clone(), hessian, 3, eigen=eigen)
    assert float((factor_b @ factor_a).abs().max()) == 0.0


def test_rank_rule():
    assert LowRank(rank=8).rank_for(576, 1536, "mlp") == 8
    # budget: rank * (out + in) <= budget * out * in
    assert LowRank(budget=0.05).rank_for(576, 576, "q") == 14
    assert LowRank(budget=0.05).rank_for(192, 576, "k") == 7
    assert LowRank(budget=0.05).rank_for(4, 4, "tiny") == 0
    assert LowRank(budget=1.0).rank_for(8, 1000, "wide") == 7  # floor(8000 / 1008)
    with pytest.raises(ValueError, match=r"layer model.layers.0.k_proj \(8 x 16\) allows a rank of at most 8"):
        LowRank(rank=9).rank_for(8, 16, "model.layers.0.k_proj")


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of rank and budget"),
    ({"rank": 4, "budget": 0.1}, "exactly one of rank and budget"),
    ({"rank": 0}, "'rank' must be an int >= 1"),
    ({"rank": 2.5}, "'rank' must be an int >= 1"),
    ({"budget": 0.0}, r"'budget' must be a fraction in \(0, 1\]"),
    ({"budget": 1.5}, r"'budget' must be a fraction in \(0, 1\]"),
    ({"rank": 2, "eigenvalue_floor": 0.0}, "'eigenvalue_floor' must be in"),
])
def test_bad_lowrank_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRank(**kwargs)


def test_bad_input_names_the_layer():
    _, hessian, dense, pruned = _problem()
    with pytest.raises(ValueError, match=r"layer q_proj \(24 x 40\) allows a rank in \[1, 24\], but got 25"):
        eora_factors(dense, pruned, hessian, 25, name="q_proj")
    with pytest.raises(ValueError, match="layer q_proj: expected a Hessian of shape"):
        eora_factors(dense, pruned, hessian[:3, :3], 2, name="q_proj")
    bad = hessian.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer q_proj: the input second moment holds NaN"):
        eora_factors(dense, pruned, bad, 2, name="q_proj")
    with pytest.raises(ValueError, match="layer q_proj: its calibration inputs are all zero"):
        eora_factors(dense, pruned, torch.zeros_like(hessian), 2, name="q_proj")
    with pytest.raises(ValueError, match="expected dense and pruned weights of one 2-D shape"):
        eora_factors(dense, pruned[:, :3], hessian, 2, name="q_proj")
