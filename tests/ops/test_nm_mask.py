"""prunekit.ops.nm_mask against its reference: exact masks over dtypes, shapes, n:m and ties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import ops
from prunekit.ops import _reference as ref

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def random_scores(shape, dtype, zero_fraction, generator):
    """Random scores with a fraction of exact zeros (many ties) and duplicated values."""
    scores = torch.randn(shape, generator=generator).abs()
    scores[torch.rand(shape, generator=generator) < zero_fraction] = 0
    return scores.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (0, 4), (4, 4), (1, 1), (3, 7), (5, 32)])
@pytest.mark.parametrize("shape_rows", [(1,), (3,), (33,), (2, 5)])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 0.9, 1.0])
def test_matches_reference(device, dtype, n, m, shape_rows, zero_fraction, generator):
    scores = random_scores((*shape_rows, 3 * m), dtype, zero_fraction, generator).to(device)
    keep = ops.nm_mask(scores, n, m)
    assert keep.dtype == torch.bool and keep.shape == scores.shape and keep.device == scores.device
    assert torch.equal(keep.cpu(), ref.nm_mask(scores.cpu(), n, m))
    assert torch.equal(keep.reshape(-1, m).sum(1), torch.full((keep.numel() // m,), n, device=device))


def test_keeps_largest_and_breaks_ties_by_lower_index(device):
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0, -1.0, -3.0, -2.0, 0.0]], device=device)
    keep = ops.nm_mask(scores, 2, 4).cpu()
    expected = [[0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1]]
    assert keep.tolist() == [[bool(v) for v in expected[0]]]


def test_negative_zero_ties_with_zero(device):
    scores = torch.tensor([[-0.0, 0.0, -0.0, 0.0]], device=device)
    assert ops.nm_mask(scores, 2, 4).cpu().tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [17, 64, 576])
def test_large_groups_use_selection_and_match(device, dtype, m, generator):
    # many ties, both signs, +0.0 and -0.0 mixed (equal, as the reference compares them)
    scores = torch.randint(-2, 3, (9, 4 * m), generator=generator).to(dtype)
    scores[(scores == 0) & (torch.rand(scores.shape, generator=generator) < 0.5)] = -0.0
    spread = torch.randn(9, 4 * m, generator=generator).to(dtype)
    for values in (scores, spread, -spread.abs()):
        values = values.to(device)
        for n in (0, 1, 2, m // 2, m - 1, m):
            assert torch.equal(ops.nm_mask(values, n, m).cpu(), ref.nm_mask(values.cpu(), n, m))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    groups=st.integers(1, 12),
    nm=st.sampled_from([(2, 4), (4, 8), (1, 2), (3, 5), (7, 16)]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
    integer_valued=st.booleans(),
)
def test_fuzz_against_reference(rows, groups, nm, dtype, seed, integer_valued):
    n, m = nm
    generator = torch.Generator().manual_seed(seed)
    if integer_valued:
        scores = torch.randint(-3, 4, (rows, groups * m), generator=generator).to(dtype)
    else:
        scores = (torch.randn(rows, groups * m, generator=generator) * 100).to(dtype)
    assert torch.equal(ops.nm_mask(scores, n, m), ref.nm_mask(scores, n, m))


def test_opcheck(device, generator):
    scores = torch.randn(8, 16, generator=generator).to(device)
    torch.library.opcheck(torch.ops.prunekit.nm_mask.default, (scores, 2, 4))


def test_compile_fullgraph(generator):
    weight = torch.randn(16, 32, generator=generator)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def prune(w):
        return w * ops.nm_mask(w.abs(), 2, 4)

    assert torch.equal(prune(weight), weight * ref.nm_mask(weight.abs(), 2, 4))


@pytest.mark.parametrize(
    "make_scores,n,m,error,pattern",
    [
        (lambda: torch.ones(4, 8, dtype=torch.int32), 2, 4, ValueError, r"'scores' must have dtype one of .*Int"),
        (lambda: torch.ones(4, 10), 2, 4, ValueError, r"multiple of m=4, but got 10"),
        (lambda: torch.ones(4, 8), 5, 4, ValueError, r"'n' must be in \[0, m=4\], but got 5"),
        (lambda: torch.ones(4, 8), -1, 4, ValueError, r"'n' must be in \[0, m=4\], but got -1"),
        (lambda: torch.ones(4, 8), 0, 0, ValueError, r"'m' must be >= 1, but got 0"),
        (lambda: torch.ones(4, 8), 1, -4, ValueError, r"'m' must be >= 1, but got -4"),
        (lambda: torch.ones(0, 8), 2, 4, ValueError, r"must be non-empty, but got shape \[0, 8\]"),
        (lambda: torch.ones(8, 8).t()[:, :4], 2, 4, ValueError, r"must be contiguous"),
        (lambda: torch.tensor(1.0), 1, 1, ValueError, r"at least 1 dimension"),
    ],
)
def test_bad_arguments(make_scores, n, m, error, pattern):
    with pytest.raises(error, match=pattern):
        ops.nm_mask(make_scores(), n, m)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_scores_are_rejected(device, bad, dtype):
    scores = torch.ones(3, 8, dtype=dtype)
    scores[2, 5] = bad
    with pytest.raises(ValueError, match=r"'scores' must be finite, but entry 5 of row 2 .* is (nan|inf|-inf)"):
        ops.nm_mask(scores.to(device), 2, 4)
