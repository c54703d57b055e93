"""The "2:4" format: exact round trips (and through the CPU bitmap view) over random 2:4 weights;
bad metadata, mis-shaped or misaligned tensors and weights that are not 2:4 are ValueErrors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit import formats, ops
from prunekit.formats import from_semi24, to_semi24
from prunekit.formats.semi24 import first_dense_group, layout_problem

from format_cases import assert_round_trip, random_24, sparse_weight, weights_24

SEMI24 = formats.get("2:4")


@settings(max_examples=40, deadline=None)
@given(weights_24())
def test_round_trips_exactly(matrix):
    state = assert_round_trip(SEMI24, matrix)
    if matrix.dtype != torch.float16:  # the CPU kernels' bitmap view: exact both ways
        view = SEMI24.kernel_view(state, matrix.shape[1])
        assert torch.equal(view.to_dense(), matrix)
        values, meta = to_semi24(view)
        assert torch.equal(values, state["values"]) and torch.equal(meta, state["meta"])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([torch.float32, torch.bfloat16]), st.integers(0, 2**31 - 1))
def test_any_metadata_is_decoded_exactly_or_refused_by_both_decoders(dtype, seed):
    """Random metadata words: the bitmap view and decompress_24 agree on whether they are valid,
    and on the weight when they are (no crash, no silent difference)."""
    generator = torch.Generator().manual_seed(seed)
    state = SEMI24.compress(random_24(32, 64, dtype, generator), "t")
    meta = torch.randint(-(2**15), 2**15, state["meta"].shape, generator=generator, dtype=torch.int32)
    meta = meta.to(torch.int16)
    if seed % 2:  # mostly valid words: only one group's code replaced
        meta = state["meta"].clone()
        meta.view(-1)[seed % meta.numel()] ^= torch.tensor(seed % 65536).to(torch.int32).to(torch.int16)
    bad = {"values": state["values"], "meta": meta}
    try:
        expected = SEMI24.to_dense(bad, 32, 64)
    except ValueError:
        with pytest.raises(ValueError, match="two distinct ascending columns per group"):
            SEMI24.kernel_view(bad, 64)
    else:
        assert torch.equal(SEMI24.kernel_view(bad, 64).to_dense(), expected)


def test_compress_refuses_what_is_not_2_4_or_does_not_fit():
    with pytest.raises(ValueError, match=r"t: format='2:4' needs at most 2 nonzeros in every group of 4 consecutive "
                                         r"input columns, but row 0, columns 0..3 hold [34]"):
        SEMI24.compress(sparse_weight(32, 64, 0.0, torch.float32), "t")
    with pytest.raises(ValueError, match=r"t: format='2:4' cannot hold this weight: the 2:4 layout needs rows % 32 "
                                         r"== 0 "
                                         r"and columns % 32 == 0, but the weight matrix is 48 x 64"):
        SEMI24.compress(torch.zeros(48, 64), "t")
    with pytest.raises(ValueError, match=r"holds float16, bfloat16 or float32 weights, but the weight is float64"):
        SEMI24.compress(torch.zeros(32, 64, dtype=torch.float64), "t")
    assert first_dense_group(torch.ones(2, 6)) == (0, 0, -1)  # columns not in groups of four
    assert first_dense_group(torch.tensor([[1.0, 0, 1, 0, 1, 1, 1, 0]])) == (0, 1, 3)
    assert layout_problem(32, 32, torch.float32) is None


def _state(dtype=torch.float32):
    return SEMI24.compress(random_24(32, 64, dtype, torch.Generator().manual_seed(0)), "t")


@pytest.mark.parametrize("change, message", [
    (lambda s: {**s, "values": s["values"][:, :-1]},
     r"tensor 'values' of a '2:4' 32x64 float32 weight must be float32 of shape \(32, 32\), but got float32 of shape "
     r"\(32, 31\)"),
    (lambda s: {**s, "values": s["values"].half()}, r"tensor 'values' .* must be float32 .* but got float16"),
    (lambda s: {**s, "meta": s["meta"][:16]}, r"tensor 'meta' .* must be int16 of shape \(32, 4\), but got int16 of "
                                              r"shape \(16, 4\)"),
    (lambda s: {**s, "meta": s["meta"].int()}, r"tensor 'meta' .* must be int16 .* but got int32"),
    (lambda s: {"values": s["values"]}, r"format '2:4' needs tensors \['meta', 'values'\], but got \['values'\]"),
])
def test_corrupt_states_are_named(change, message):
    with pytest.raises(ValueError, match="owner: " + message):
        SEMI24.check_state("owner", change(_state()), 32, 64, torch.float32)


def test_shapes_the_layout_cannot_hold_are_refused_even_when_they_agree():
    values, meta = torch.zeros(16, 32), torch.zeros(16, 4, dtype=torch.int16)  # the shapes of a 16 x 64 weight
    with pytest.raises(ValueError, match=r"owner: a '2:4' weight's tensors must fit the layout: the 2:4 layout needs "
                                         r"rows % 32 == 0 .* but the weight matrix is 16 x 64"):
        SEMI24.check_state("owner", {"values": values, "meta": meta}, 16, 64, torch.float32)
    with pytest.raises(ValueError, match=r"2:4 layout: dtype must be one of .* but got torch.float64"):
        SEMI24.check_state("owner", {"values": values, "meta": meta}, 32, 64, torch.float64)


def test_modules_name_corrupt_metadata():
    state = _state()
    meta = state["meta"].clone()
    meta.zero_()  # every group names column 0 twice
    with pytest.raises(ValueError, match=r"SparseLinear: the 2:4 metadata is corrupt: from_semi24: meta must "
                                         r"encode two "
                                         r"distinct ascending columns per group, but the group at row 0, columns 0..3"):
        prunekit.nn.SparseLinear(64, 32, format="2:4", tensors={"values": state["values"], "meta": meta})
    with pytest.raises(ValueError, match="argument 'meta' must encode two distinct ascending columns"):
        SEMI24.to_dense({"values": state["values"], "meta": meta}, 32, 64)


def test_from_semi24_rejects_metadata_it_cannot_convert_exactly():
    dense = sparse_weight(32, 64, 0.0, torch.float32)
    values, meta = ops.compress_24(dense * ops.nm_mask(dense.abs(), 2, 4))
    for wrong in (torch.int32, torch.int64, torch.float32):
        with pytest.raises(ValueError, match=rf"meta must have dtype torch.int16 \(as compress_24 returns it\), "
                                             rf"but got "
                                             rf"{wrong}"):
            from_semi24(values, meta.to(wrong))
    with pytest.raises(ValueError, match=r"meta must have shape \[32, 4\] for values of shape \[32, 32\], but got "
                                         r"\[64, 4\]"):
        from_semi24(values, torch.cat([meta, meta]))
    with pytest.raises(ValueError, match=r"values must be 2-D \(rows, in_features / 2\), but got shape \[1024\]"):
        from_semi24(values.reshape(-1), meta)
    with pytest.raises(ValueError, match=r"multiple of 32 rows and of 16 columns .* but got shape \[31, 32\]"):
        from_semi24(values[:31].contiguous(), meta[:31].contiguous())
    with pytest.raises(ValueError, match=r"values must be float32 or bfloat16, but got torch.float16"):
        from_semi24(values.half(), meta)
    descending = meta.clone()
    descending[0, 0] = (int(meta[0, 0]) & ~0xF) | 0x1  # group 0 of row 0 names columns (1, 0)
    with pytest.raises(ValueError, match=r"two distinct ascending columns per group, but the group at row 0, "
                                         r"columns 0..3"):
        from_semi24(values, descending)
    with pytest.raises(ValueError, match=r"two distinct ascending columns per group"):
        ops.decompress_24(values, descending)  # the same rule as the CUDA layout's own decoder


def test_to_semi24_refuses_weights_that_are_not_2_4():
    view = from_semi24(*ops.compress_24(random_24(32, 64, torch.float32, torch.Generator().manual_seed(1))))
    unstructured = formats.get("unstructured").kernel_view(
        formats.get("unstructured").compress(sparse_weight(32, 64, 0.5, torch.float32), "t"), 64)
    truncated = type(view)(view.values[:-1], view.bitmap, view.row_offsets, view.cols)
    for bad in (unstructured, truncated):
        with pytest.raises(ValueError, match=r"to_semi24: the weight must mark exactly 2 of every 4 columns"):
            to_semi24(bad)
