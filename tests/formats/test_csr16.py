"""The "csr16" storage and Csr16Weight: exact round trips over random shapes, dtypes and
sparsities; every corrupt index or offset is a ValueError naming it."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings

from prunekit import formats
from prunekit.formats import BitmapWeight, Csr16Weight
from prunekit.formats.csr16 import column_indices

from format_cases import assert_round_trip, sparse_weight, weights

CSR16 = formats.get("csr16")


@settings(max_examples=60, deadline=None)
@given(weights())
def test_round_trips_exactly(matrix):
    state = assert_round_trip(CSR16, matrix)
    bitmap = BitmapWeight.from_dense(matrix)
    assert torch.equal(state["values"], bitmap.values)  # the values are packed as in the bitmap format
    assert torch.equal(state["col_indices"], column_indices(bitmap.bitmap, matrix.shape[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (37, 100), (8, 256), (2, 40000)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_format_round_trips_and_shares_the_bitmap_values(dtype, shape, sparsity):
    dense = sparse_weight(*shape, sparsity, dtype)
    bitmap = BitmapWeight.from_dense(dense)
    weight = Csr16Weight.from_bitmap(bitmap)
    assert weight.values is bitmap.values and weight.shape == shape
    assert torch.equal(weight.to_dense(), dense)
    rows_of, cols_of = dense.nonzero(as_tuple=True)
    assert torch.equal(weight.col_indices.long() & 0xFFFF, cols_of)
    assert torch.equal(weight.row_offsets[1:], torch.bincount(rows_of, minlength=shape[0]).cumsum(0))
    assert weight.nbytes() == weight.values.numel() * (dense.element_size() + 2) + (shape[0] + 1) * 8


def test_the_format_class_checks_its_tensors():
    weight = Csr16Weight.from_dense(sparse_weight(8, 40, 0.5, torch.float32))
    assert weight.validate() is weight
    cases = {
        r"columns of each row must be strictly increasing, but row 0 has (\d+) then \1":
            lambda c, o: c.__setitem__(1, c[0]),
        r"row 0 of 'col_indices' names column 45, past cols=40": lambda c, o: c.__setitem__(0, 45),
        r"row 0 of 'col_indices' names column 65535, past cols=40": lambda c, o: c.__setitem__(0, -1),
        r"'row_offsets' must be non-decreasing, but entry 4 is below entry 3": lambda c, o: o.__setitem__(3, o[4] + 1),
        r"'row_offsets' must start at 0 and end at values.numel\(\)=\d+": lambda c, o: o.__setitem__(-1, o[-1] - 1),
    }
    for message, corrupt in cases.items():
        columns, offsets = weight.col_indices.clone(), weight.row_offsets.clone()
        corrupt(columns, offsets)
        bad = dataclasses.replace(weight, col_indices=columns, row_offsets=offsets)
        for check in (bad.validate, bad.to_dense):
            with pytest.raises(ValueError, match=message):
                check()
    bitmap_weight = BitmapWeight.from_dense(sparse_weight(8, 40, 0.5, torch.float32))
    flipped = bitmap_weight.bitmap.clone()
    flipped[2, 0] ^= 1  # row 2 marks one position more or fewer than its offsets span
    with pytest.raises(ValueError, match=r"from_bitmap: the bitmap weight is corrupt: 'row_offsets'\[3\] must be"):
        Csr16Weight.from_bitmap(dataclasses.replace(bitmap_weight, bitmap=flipped))
    with pytest.raises(ValueError, match=r"from_bitmap: the bitmap weight is corrupt: 'row_offsets'\[0\] must be 0 "):
        Csr16Weight.from_bitmap(dataclasses.replace(bitmap_weight, row_offsets=bitmap_weight.row_offsets + 3))
    with pytest.raises(ValueError, match=r"'row_offsets' must have rows \+ 1 >= 2 entries, but got 1"):
        dataclasses.replace(weight, row_offsets=weight.row_offsets[:1]).validate()
    with pytest.raises(ValueError, match=r"cols must be in \[1, 65536\] \(16-bit column indices\), but got 70000"):
        dataclasses.replace(weight, cols=70000).validate()
    with pytest.raises(ValueError, match=r"'col_indices' must be 1-D int16, but got int32 of shape"):
        dataclasses.replace(weight, col_indices=weight.col_indices.int()).validate()
    with pytest.raises(ValueError, match=r"'row_offsets' must be 1-D int64, but got float32 of shape"):
        dataclasses.replace(weight, row_offsets=weight.row_offsets.float()).validate()


def _state():
    return CSR16.compress(sparse_weight(8, 40, 0.5, torch.float32), "t")


@pytest.mark.parametrize("change, message", [
    (lambda s: {**s, "values": s["values"][:-1]}, r"tensor 'values' of a 'csr16' 8x40 float32 weight must be float32 "
                                                  r"of shape \(\d+,\), but got float32 of shape"),
    (lambda s: {**s, "col_indices": s["col_indices"][:-1]}, r"tensor 'col_indices' .* must be int16 of shape"),
    (lambda s: {**s, "col_indices": s["col_indices"].long()}, r"tensor 'col_indices' .* but got int64"),
    (lambda s: {**s, "row_offsets": s["row_offsets"][:-1]}, r"tensor 'row_offsets' .* must be int64 of shape \(9,\)"),
    (lambda s: {k: v for k, v in s.items() if k != "col_indices"}, r"format 'csr16' needs tensors"),
    (lambda s: {**s, "col_indices": s["col_indices"].flip(0)}, r"the columns of each row must be strictly increasing"),
    (lambda s: {**s, "row_offsets": torch.cat((torch.tensor([1]), s["row_offsets"][1:]))},
     r"'row_offsets' must start at 0"),
])
def test_corrupt_states_are_named(change, message):
    with pytest.raises(ValueError, match="owner: " + message):
        CSR16.check_state("owner", change(_state()), 8, 40, torch.float32)


def test_compress_refuses_what_it_cannot_index():
    with pytest.raises(ValueError, match=r"t: format='csr16' holds 1 to 65536 columns .* but the weight has 70000"):
        CSR16.compress(torch.zeros(1, 70000), "t")
    with pytest.raises(ValueError, match=r"holds float32, bfloat16 or float16 weights, but the weight is int64"):
        CSR16.compress(torch.zeros(2, 2, dtype=torch.int64), "t")
    with pytest.raises(ValueError, match=r"at most 65536 columns, but the weight has 70000"):
        column_indices(torch.zeros(1, 4375, dtype=torch.int16), 70000)
