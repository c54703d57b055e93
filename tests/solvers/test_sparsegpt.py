"""SparseGPT engine: agreement with the reference loop, exact sparsity and N:M validity, the
robust factorisation and bad inputs."""

import pytest
import torch

import prunekit
from prunekit.ops import _reference as ref
from prunekit.solvers import inverse_hessian_factor, parse_pattern, sparsegpt

ISAS = prunekit.build_info()["cpu_isas_runnable"]  # variants this CPU cannot run are not forced


def layer(rows, cols, tokens=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=generator) * (0.1 + 3 * torch.rand(cols, generator=generator))
    weight = torch.randn(rows, cols, generator=generator)
    return x, weight, 2 / tokens * x.T @ x


def relative_error(x, weight, pruned):
    return ((x @ (weight - pruned).T).square().sum() / (x @ weight.T).square().sum()).item()


@pytest.fixture(params=ISAS)
def isa(request):
    prunekit._C._set_cpu_isa(request.param)
    yield request.param
    prunekit._C._set_cpu_isa("")


CASES = [(0.5, None), (0.7, None), (0.0, None), (0.9, None), (None, "2:4"), (None, "4:8"), (None, (1, 3))]


@pytest.mark.parametrize("sparsity,pattern", CASES)
@pytest.mark.parametrize("shape", [(64, 384), (37, 200), (5, 24)])  # remainder row tiles and blocks
@pytest.mark.parametrize("blocksize", [128, 48])
def test_matches_reference_loop(isa, sparsity, pattern, shape, blocksize):
    rows, cols = shape
    nm = parse_pattern(pattern)
    if nm and cols % nm[1]:
        pytest.skip("in_features not a multiple of m")
    x, weight, hessian = layer(rows, cols)
    pruned, keep = sparsegpt(weight, hessian, sparsity=sparsity, pattern=pattern, blocksize=blocksize)
    n, m = nm or (0, 0)
    ref_weight, ref_keep = ref.sparsegpt(weight, hessian, sparsity if sparsity is not None else 1 - n / m, n, m,
                                         blocksize if not m else max(m, blocksize // m * m))
    # Masks are chosen from the updated weights, so float differences could flip a near tie; on
    # these inputs they agree exactly, and the errors agree to the quality bar (1.001x).
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(pruned, ref_weight, rtol=1e-4, atol=1e-4)
    assert relative_error(x, weight, pruned) <= 1.001 * relative_error(x, weight, ref_weight) + 1e-12
    assert bool((pruned[~keep] == 0).all())
    if nm is None:
        assert int((~keep).sum()) == round(sparsity * rows * cols)  # exact count
    else:
        kept_per_group = keep.reshape(rows, -1, nm[1]).sum(-1)
        assert bool((kept_per_group == nm[0]).all())


def test_beats_magnitude_pruning_and_leaves_inputs_alone():
    x, weight, hessian = layer(48, 256, tokens=512)
    weight_copy, hessian_copy = weight.clone(), hessian.clone()
    pruned, keep = sparsegpt(weight, hessian, sparsity=0.5)
    assert torch.equal(weight, weight_copy) and torch.equal(hessian, hessian_copy)
    magnitude = weight * ref.nm_mask(weight.abs(), 128, 256)
    assert relative_error(x, weight, pruned) < 0.7 * relative_error(x, weight, magnitude)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_inputs_compute_in_fp32(dtype):
    x, weight, hessian = layer(32, 128)
    pruned, keep = sparsegpt(weight.to(dtype), hessian.to(dtype), pattern="2:4")
    assert pruned.dtype == dtype
    reference, _ = sparsegpt(weight.to(dtype).float(), hessian.to(dtype).float(), pattern="2:4")
    assert torch.equal(pruned, reference.to(dtype))


def test_dead_inputs_are_zeroed_and_pruned():
    x, weight, _ = layer(16, 64)
    x[:, 5] = 0
    hessian = 2 / x.shape[0] * x.T @ x
    pruned, keep = sparsegpt(weight, hessian, sparsity=0.25)
    assert bool((pruned[:, 5] == 0).all()) and not bool(keep[:, 5].any())


def test_singular_hessian_retries_with_more_damping_and_warns():
    x, weight, _ = layer(8, 32, tokens=4)  # rank 4 of 32: singular without damping
    hessian = 2 / 4 * x.T @ x
    with pytest.warns(RuntimeWarning, match=r"sparsegpt\(decoder.0.q\): Cholesky .* failed with damping 0; retrying"):
        pruned, keep = sparsegpt(weight, hessian, sparsity=0.5, percdamp=0.0, name="decoder.0.q")
    # the retry produced a real solve: finite, the exact count pruned, the kept weights updated
    assert bool(torch.isfinite(pruned).all())
    assert int((~keep).sum()) == 128 and bool((pruned[~keep] == 0).all())
    assert not torch.equal(pruned[keep], weight[keep])


def test_hopeless_hessian_is_an_error_not_an_identity():
    hessian = -torch.eye(16)
    with pytest.warns(RuntimeWarning):
        with pytest.raises(ValueError, match=r"not positive definite .* after 4 retries"):
            inverse_hessian_factor(hessian, name="layer3")


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(hessian=torch.zeros(16, 16)), r"hessian is all zeros: no calibration input reached"),
        (dict(hessian=torch.eye(8)), r"hessian must be \(16, 16\) to match weight \(4, 16\), but got \(8, 8\)"),
        (dict(hessian=torch.ones(16, 8)), r"hessian must be square, but got shape \(16, 8\)"),
        (dict(sparsity=1.0), r"sparsity must be in \[0, 1\), but got 1.0"),
        (dict(sparsity=-0.1), r"sparsity must be in \[0, 1\), but got -0.1"),
        (dict(pattern="3:2"), r"expected 0 < n < m .* got n=3, m=2"),
        (dict(pattern="2:3"), r"in_features must be a multiple of m=3 .* but got 16"),
        (dict(pattern="a:b"), r"expected 'n:m'"),
        (dict(pattern="2:4", sparsity=0.7), r"sparsity 0.7 contradicts pattern 2:4"),
        (dict(weight=torch.full((4, 16), float("nan"))), r"weight must be finite"),
        (dict(hessian=torch.full((16, 16), float("inf"))), r"hessian must be finite"),
        (dict(weight=torch.ones(4, 16, dtype=torch.int32)), r"weight must be floating point"),
        (dict(blocksize=0), r"blocksize must be >= 1, but got 0"),
    ],
)
def test_bad_inputs(kwargs, pattern):
    args = dict(weight=torch.randn(4, 16), hessian=torch.eye(16))
    args.update(kwargs)
    weight, hessian = args.pop("weight"), args.pop("hessian")
    with pytest.raises(ValueError, match=pattern):
        sparsegpt(weight, hessian, **args)


def test_solve_op_checks_and_opcheck():
    x, weight, hessian = layer(8, 32)
    hinv = inverse_hessian_factor(hessian)
    torch.library.opcheck(torch.ops.prunekit.sparsegpt_solve_.default, (weight.clone(), hinv, 0.5, 0, 0, 16))
    torch.library.opcheck(torch.ops.prunekit.sparsegpt_solve_.default, (weight.clone(), hinv, 0.0, 2, 4, 16))
    with pytest.raises(ValueError, match=r"'hinv' must have shape \[32, 32\], but got \[16, 16\]"):
        torch.ops.prunekit.sparsegpt_solve_(weight.clone(), hinv[:16, :16].contiguous(), 0.5, 0, 0, 16)
    with pytest.raises(ValueError, match=r"'blocksize' for the N:M pattern must be a multiple of 4, but got 6"):
        torch.ops.prunekit.sparsegpt_solve_(weight.clone(), hinv, 0.0, 2, 4, 6)
    with pytest.raises(ValueError, match=r"\(n, m\) must satisfy 1 <= n < m <= 64"):
        torch.ops.prunekit.sparsegpt_solve_(weight.clone(), hinv, 0.0, 4, 4, 16)
    with pytest.raises(ValueError, match=r"'weight' must have dtype Float, but got Half"):
        torch.ops.prunekit.sparsegpt_solve_(weight.half(), hinv, 0.5, 0, 0, 16)


def test_solve_under_compile():
    x, weight, hessian = layer(8, 32)
    hinv = inverse_hessian_factor(hessian)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def solve(w, h):
        w = w.clone()
        keep = torch.ops.prunekit.sparsegpt_solve_(w, h, 0.5, 0, 0, 16)
        return w, keep

    w, keep = solve(weight, hinv)
    expected = weight.clone()
    assert torch.equal(keep, torch.ops.prunekit.sparsegpt_solve_(expected, hinv, 0.5, 0, 0, 16))
    assert torch.equal(w, expected)
