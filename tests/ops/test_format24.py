"""prunekit.ops.compress_24 / decompress_24: bit-exact against torch's CUTLASS layout and the
reference, lossless round trips, and clear errors for everything else."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

from prunekit import ops
from prunekit.formats import semi24_layout
from prunekit.ops import _reference as ref
from format_cases import random_24

DTYPES = [torch.float16, torch.bfloat16, torch.int8, torch.float32]
TORCH_LAYOUT_DTYPES = [torch.float16, torch.bfloat16, torch.int8]  # torch's fp32 layout is 1:2


def shape_for(dtype, row_blocks, col_blocks):
    layout = semi24_layout(dtype)
    return row_blocks * layout.row_alignment, col_blocks * layout.col_alignment


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", [(1, 1), (1, 3), (3, 1), (5, 7)])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 0.9, 1.0])
def test_matches_reference_and_round_trips(device, dtype, blocks, zero_fraction, generator):
    dense = random_24(*shape_for(dtype, *blocks), dtype, generator, zero_fraction)
    values, meta = ops.compress_24(dense.to(device))
    layout = semi24_layout(dtype)
    assert values.shape == layout.values_shape(*dense.shape) and values.dtype == dtype
    assert meta.shape == layout.meta_shape(*dense.shape) and meta.dtype == layout.meta_dtype
    ref_values, ref_meta = ref.compress_24(dense)
    assert torch.equal(values.cpu(), ref_values)
    assert torch.equal(meta.cpu(), ref_meta)
    restored = ops.decompress_24(values, meta)
    assert restored.dtype == dtype and restored.device == values.device
    assert torch.equal(restored.cpu(), dense)
    assert torch.equal(ref.decompress_24(values.cpu(), meta.cpu()), dense)


@pytest.mark.parametrize("dtype", TORCH_LAYOUT_DTYPES)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 0.9, 1.0])
def test_bit_identical_to_torch_cutlass_layout(device, dtype, zero_fraction, generator):
    dense = random_24(*shape_for(dtype, 4, 4), dtype, generator, zero_fraction)
    values, meta = ops.compress_24(dense.to(device))
    torch_values, torch_meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert torch.equal(values.cpu(), torch_values)
    assert torch.equal(meta.cpu(), torch_meta)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 8).map(lambda b: 32 * b),  # 32..256
    cols=st.integers(1, 8).map(lambda b: 64 * b),  # 64..512
    dtype=st.sampled_from(TORCH_LAYOUT_DTYPES),
    zero_fraction=st.sampled_from([0.0, 0.3, 0.9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_bit_identical_to_torch(rows, cols, dtype, zero_fraction, seed):
    dense = random_24(rows, cols, dtype, torch.Generator().manual_seed(seed), zero_fraction)
    values, meta = ops.compress_24(dense)
    torch_values, torch_meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert torch.equal(values, torch_values) and torch.equal(meta, torch_meta)
    assert torch.equal(ops.decompress_24(values, meta), dense)


@settings(max_examples=40, deadline=None)
@given(
    row_blocks=st.integers(1, 6),
    col_blocks=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_fuzz_every_group_pattern_round_trips(row_blocks, col_blocks, dtype, seed, data):
    """Each group gets one of the 11 patterns with at most two nonzeros, values arbitrary bits."""
    rows, cols = shape_for(dtype, row_blocks, col_blocks)
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.tensor(
        [[a, b, c, d] for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1) if a + b + c + d <= 2],
        dtype=torch.bool,
    )
    choice = torch.randint(0, len(patterns), (rows, cols // 4), generator=generator)
    mask = patterns[choice].reshape(rows, cols)
    if dtype == torch.int8:
        dense = torch.randint(-128, 128, (rows, cols), generator=generator).to(torch.int8)
    else:
        special = data.draw(st.sampled_from([0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -1.0]))
        dense = (torch.randn(rows, cols, generator=generator) * 1e3).to(dtype)
        dense[torch.rand(rows, cols, generator=generator) < 0.1] = special
    dense = torch.where(mask, dense, torch.zeros((), dtype=dtype))
    values, meta = ops.compress_24(dense)
    restored = ops.decompress_24(values, meta)
    # Bitwise equality (NaN payloads included); -0.0 stored as a zero comes back as +0.0 only
    # where it was dropped, and the mask above never puts -0.0 outside kept positions.
    assert torch.equal(restored.view(torch.uint8), dense.view(torch.uint8))
    ref_values, ref_meta = ref.compress_24(dense)
    # The reference goes through torch ops that may canonicalise NaN payloads: compare values.
    torch.testing.assert_close(values, ref_values, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(meta, ref_meta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(device, dtype, generator):
    dense = random_24(*shape_for(dtype, 1, 2), dtype, generator).to(device)
    torch.library.opcheck(torch.ops.prunekit.compress_24.default, (dense,))
    values, meta = ops.compress_24(dense)
    torch.library.opcheck(torch.ops.prunekit.decompress_24.default, (values, meta))


def test_compile_fullgraph(generator):
    weight = torch.randn(64, 128, generator=generator, dtype=torch.float16)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def round_trip(w):
        pruned = w * ops.nm_mask(w.abs(), 2, 4)
        values, meta = ops.compress_24(pruned)
        return pruned, ops.decompress_24(values, meta)

    pruned, restored = round_trip(weight)
    assert torch.equal(pruned, restored)


@pytest.mark.parametrize("dtype", DTYPES)
def test_too_many_nonzeros_is_an_error_not_a_silent_drop(device, dtype):
    rows, cols = shape_for(dtype, 1, 1)
    dense = torch.zeros(rows, cols, dtype=dtype)
    dense[7, 12:15] = 1  # three nonzeros in the group at columns 12..15 of row 7
    with pytest.raises(ValueError, match=r"must be 2:4 sparse .* group at row 7, columns 12..15"):
        ops.compress_24(dense.to(device))


@pytest.mark.parametrize(
    "make_dense,pattern",
    [
        (lambda: torch.zeros(32, 64, dtype=torch.float64), r"'dense' must have dtype one of .*but got Double"),
        (lambda: torch.zeros(2, 32, 64, dtype=torch.float16), r"'dense' must be 2-D, but got a 3-D"),
        (lambda: torch.zeros(0, 64, dtype=torch.float16), r"non-empty, but got shape \[0, 64\]"),
        (lambda: torch.zeros(64, 32, dtype=torch.float16).t(), r"must be contiguous"),
        (lambda: torch.zeros(48, 64, dtype=torch.float16), r"rows of 'dense' must be a multiple of 32, but got 48"),
        (lambda: torch.zeros(32, 48, dtype=torch.float16), r"columns of 'dense' must be a multiple of 32, but got 48"),
        (lambda: torch.zeros(24, 64, dtype=torch.int8), r"rows of 'dense' must be a multiple of 16, but got 24"),
        (lambda: torch.zeros(16, 96, dtype=torch.int8), r"columns of 'dense' must be a multiple of 64, but got 96"),
    ],
)
def test_compress_bad_arguments(make_dense, pattern):
    with pytest.raises(ValueError, match=pattern):
        ops.compress_24(make_dense())


def test_decompress_bad_arguments(generator):
    values, meta = ops.compress_24(random_24(32, 64, torch.float16, generator))
    with pytest.raises(ValueError, match=r"'meta' must have dtype Short for values of dtype Half, but got Int"):
        ops.decompress_24(values, meta.int())
    with pytest.raises(ValueError, match=r"'meta' must have shape \[32, 4\] .* but got \[32, 2\]"):
        ops.decompress_24(values, meta[:, :2].contiguous())
    with pytest.raises(ValueError, match=r"'values' must have dtype one of"):
        ops.decompress_24(values.double(), meta)
    with pytest.raises(ValueError, match=r"'values' must be contiguous"):
        ops.decompress_24(torch.zeros(64, 32, dtype=torch.float16).t(), meta)
    with pytest.raises(ValueError, match=r"rows of 'values' must be a multiple of 32, but got 16"):
        ops.decompress_24(values[:16], meta[:16])
    with pytest.raises(ValueError, match=r"'values' must be non-empty"):
        ops.decompress_24(values[:0], meta[:0])


def test_decompress_rejects_corrupt_meta(device, generator):
    values, meta = ops.compress_24(random_24(32, 64, torch.bfloat16, generator))
    corrupt = meta.clone()
    corrupt.view(-1)[5] = 0  # nibble 0b0000 names column 0 twice
    with pytest.raises(ValueError, match=r"'meta' must encode two distinct ascending columns"):
        ops.decompress_24(values.to(device), corrupt.to(device))
