"""The "unstructured" (bitmap) format: exact round trips over random shapes, dtypes and
sparsities; every corrupt or mis-shaped state is a ValueError naming the tensor, never a crash."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit import formats
from prunekit.formats import BitmapWeight, Csr16Weight
from prunekit.formats.bitmap import bitmap_to_dense, row_offsets_from_bitmap

from format_cases import assert_round_trip, sparse_weight, weights

BITMAP = formats.get("unstructured")


@settings(max_examples=60, deadline=None)
@given(weights())
def test_round_trips_exactly(matrix):
    state = assert_round_trip(BITMAP, matrix)
    assert torch.equal(bitmap_to_dense(state["values"], state["bitmap"], matrix.shape[1]), matrix)  # off-CPU path
    view = BITMAP.kernel_view(state, matrix.shape[1])
    assert view.values is state["values"] and view.bitmap is state["bitmap"]  # the kernels' layout, no copy


def test_sparsity_zero_and_one_and_the_checkpoint_entry():
    full, empty = sparse_weight(3, 33, 0.0, torch.float32, 1), torch.zeros(3, 33)
    assert BITMAP.compress(full, "t")["values"].numel() == 99
    state = assert_round_trip(BITMAP, empty)
    assert state["values"].numel() == 0 and torch.equal(state["row_offsets"], torch.zeros(4, dtype=torch.int64))
    assert set(BITMAP.to_checkpoint(state)) == {"values", "bitmap"}  # row_offsets derive from the bitmap


def test_compress_refuses_other_dtypes():
    with pytest.raises(ValueError, match=r"test: format='unstructured' holds float32, bfloat16 or float16 weights, "
                                         r"but the weight is float64"):
        BITMAP.compress(torch.zeros(2, 2, dtype=torch.float64), "test")
    with pytest.raises(ValueError, match=r"argument 'dense' must be a 2-D float32, bfloat16 or float16 matrix, but got "
                                         r"int32 of shape \(2, 2\)"):
        BitmapWeight.from_dense(torch.zeros(2, 2, dtype=torch.int32))


def _state():
    return BITMAP.compress(sparse_weight(8, 40, 0.5, torch.float32, 3), "t")


def _flip(bitmap, row, bit):
    bitmap = bitmap.clone()
    bitmap[row, 0] ^= 1 << bit
    return bitmap


@pytest.mark.parametrize("change, message", [
    (lambda s: {**s, "values": s["values"][:-1]},
     r"tensor 'values' of a 'unstructured' 8x40 float32 weight must be float32 of shape \(\d+,\), but got float32 "
     r"of shape \(\d+,\)"),
    (lambda s: {**s, "values": s["values"].double()}, r"tensor 'values' .* must be float32 .* but got float64"),
    (lambda s: {**s, "bitmap": s["bitmap"][:, :2]}, r"tensor 'bitmap' .* must be int16 of shape \(8, 3\), but got "
                                                    r"int16 "
                                                    r"of shape \(8, 2\)"),
    (lambda s: {**s, "bitmap": s["bitmap"].reshape(-1)}, r"tensor 'bitmap' .* but got int16 of shape \(24,\)"),
    (lambda s: {**s, "bitmap": s["bitmap"].int()}, r"tensor 'bitmap' .* must be int16 .* but got int32"),
    (lambda s: {**s, "row_offsets": s["row_offsets"][:-1]}, r"tensor 'row_offsets' .* must be int64 of shape \(9,\)"),
    (lambda s: {**s, "row_offsets": s["row_offsets"].int()}, r"tensor 'row_offsets' .* must be int64 .* but got int32"),
    (lambda s: {k: v for k, v in s.items() if k != "bitmap"},
     r"format 'unstructured' needs tensors \['bitmap', 'row_offsets', 'values'\], but got \['row_offsets', 'values'\]"),
    (lambda s: {**s, "meta": s["bitmap"]}, r"format 'unstructured' needs tensors .* but got \['bitmap', 'meta', "
                                           r"'row_offsets', 'values'\]"),
    # A bitmap claiming one value more (or fewer) than its row's offsets span.
    (lambda s: {**s, "bitmap": _flip(s["bitmap"], 2, 0)},
     r"the bitmap weight is corrupt: 'row_offsets'\[3\] must be \d+ \(marks of 'bitmap' in the rows before it\)"),
    # Offsets and values to match the extra mark, which lies past the 40 columns.
    (lambda s: (lambda b: {"bitmap": b, "row_offsets": row_offsets_from_bitmap(b),
                           "values": torch.cat((s["values"], s["values"][:1]))})(_flip_last(s["bitmap"])),
     r"the bitmap weight is corrupt: 'bitmap' marks columns past cols=40"),
    (lambda s: {**s, "row_offsets": s["row_offsets"] + 3},  # values' length is read from the last offset
     r"tensor 'values' .* must be float32 of shape \((\d+),\), but got float32 of shape \((?!\1)\d+,\)"),
    (lambda s: {**s, "row_offsets": torch.cat((torch.tensor([3]), s["row_offsets"][1:]))},
     r"the bitmap weight is corrupt: 'row_offsets'\[0\] must be 0 .* but got 3"),
    ("not a dict", r"the tensors of format 'unstructured' must be a dict of tensors, but got str"),
])
def test_corrupt_states_are_named(change, message):
    bad = change if isinstance(change, str) else change(_state())
    with pytest.raises(ValueError, match="owner: " + message):
        BITMAP.check_state("owner", bad, 8, 40, torch.float32)


def _flip_last(bitmap):
    bitmap = bitmap.clone()
    bitmap[7, -1] |= 1 << 15  # column 47 of a 40-column weight
    return bitmap


@settings(max_examples=40, deadline=None)
@given(weights(max_rows=12, max_cols=70), st.sampled_from(["drop", "add", "flip", "offset", "swap_rows"]),
       st.integers(0, 2**31 - 1))
def test_any_corruption_is_a_clear_error(matrix, how, seed):
    """Every single corruption of a consistent state is caught by check_state (and, for the
    stored tensors, by from_checkpoint + check_state), and to_dense of it raises ValueError."""
    rows, cols = matrix.shape
    state = BITMAP.compress(matrix, "t")
    generator = torch.Generator().manual_seed(seed)
    values, bitmap, offsets = state["values"], state["bitmap"].clone(), state["row_offsets"].clone()
    if how == "drop":
        if values.numel() == 0:
            return
        values = values[:-1]
    elif how == "add":
        values = torch.cat((values, torch.ones(1, dtype=values.dtype)))
    elif how == "flip":
        row, col = (int(torch.randint(n, (1,), generator=generator)) for n in (rows, cols))
        bitmap[row, col // 16] ^= torch.tensor(1 << (col % 16)).to(torch.int32).to(torch.int16)
    elif how == "offset":
        row = int(torch.randint(rows + 1, (1,), generator=generator))
        offsets[row] += 1 if offsets[row] == 0 or row == 0 else -1
    else:
        if rows < 2 or torch.equal(bitmap[0], bitmap[1]):
            return
        bitmap[[0, 1]] = bitmap[[1, 0]]  # marks moved between rows whose counts differ, or same counts
        if torch.equal(row_offsets_from_bitmap(bitmap), offsets):
            return  # the same number of marks: a different but consistent weight
    bad = {"values": values, "bitmap": bitmap, "row_offsets": offsets}
    with pytest.raises(ValueError):
        BITMAP.check_state("t", bad, rows, cols, matrix.dtype)
    with pytest.raises(ValueError):
        BITMAP.to_dense(bad, rows, cols)
    if how not in ("offset", "swap_rows"):  # a checkpoint holds no offsets: recomputed, only values can disagree
        with pytest.raises(ValueError):
            BITMAP.check_state("t", BITMAP.from_checkpoint({"values": values, "bitmap": bitmap}, "t"), rows, cols,
                               matrix.dtype)


def test_checkpoint_entries_of_the_wrong_kind():
    state = _state()
    with pytest.raises(ValueError, match=r"owner: tensor 'bitmap' must be a 2-D int16 tensor, but got torch.float32"):
        BITMAP.from_checkpoint({"values": state["values"], "bitmap": state["bitmap"].float()}, "owner")
    with pytest.raises(ValueError, match=r"owner: a 'unstructured' weight is stored as tensors \['bitmap', 'values'\], "
                                         r"but got \['values'\]"):
        BITMAP.from_checkpoint({"values": state["values"]}, "owner")
    with pytest.raises(ValueError, match=r"stored as tensors .* but got \['bitmap', 'row_offsets', 'values'\]"):
        BITMAP.from_checkpoint(state, "owner")
    with pytest.raises(ValueError, match=r"bitmap_to_dense: the bitmap weight is corrupt: 'values' must be 1-D with"):
        bitmap_to_dense(state["values"][:-1], state["bitmap"], 40)


def test_bitmap_weight_validate_names_each_inconsistency():
    """BitmapWeight.validate (and every caller of check_bitmap_tensors: Csr16Weight.from_bitmap,
    SparseLinear / SparseConv2d built from tensors) reports which tensor disagrees with the bitmap."""
    weight = BitmapWeight.from_dense(sparse_weight(8, 40, 0.5, torch.float32, 0))
    assert weight.validate() is weight
    flipped = weight.bitmap.clone()
    flipped[2, 0] ^= 1
    stray = weight.bitmap.clone()
    stray[7, -1] |= 1 << 15  # column 47 of a 40-column weight; offsets and values count only the marks inside
    cases = [
        (r"'bitmap' must be int16 of shape \(rows, 3\) for cols=40, but got int16 of shape \(8, 4\)",
         dataclasses.replace(weight, bitmap=torch.cat((weight.bitmap, weight.bitmap[:, :1]), 1))),
        (r"'bitmap' must be int16 of shape \(rows, 3\) for cols=40, but got int16 of shape \(24,\)",
         dataclasses.replace(weight, bitmap=weight.bitmap.reshape(-1))),
        (r"'bitmap' must be int16 of shape \(rows, 3\) for cols=40, but got int32 of shape \(8, 3\)",
         dataclasses.replace(weight, bitmap=weight.bitmap.int())),
        (r"'row_offsets' must be int64, but got float32",
         dataclasses.replace(weight, row_offsets=weight.row_offsets.float() + 0.5)),
        (r"'values' must be 1-D, but got shape \(1, \d+\)", dataclasses.replace(weight, values=weight.values[None])),
        (r"'bitmap' marks columns past cols=40", dataclasses.replace(weight, bitmap=stray)),
        (r"'row_offsets' must have 9 entries \(rows of 'bitmap' \+ 1\), but got shape \(8,\)",
         dataclasses.replace(weight, row_offsets=weight.row_offsets[:-1])),
        (r"'row_offsets'\[3\] must be \d+ \(marks of 'bitmap' in the rows before it\), but got \d+",
         dataclasses.replace(weight, bitmap=flipped)),
        (r"'row_offsets'\[0\] must be 0 \(marks of 'bitmap' in the rows before it\), but got 3",
         dataclasses.replace(weight, row_offsets=weight.row_offsets + 3)),
        (rf"'values' must hold {weight.values.numel()} entries \(marks of 'bitmap'\), but got "
         rf"{weight.values.numel() - 1}", dataclasses.replace(weight, values=weight.values[:-1])),
        (r"'bitmap' marks columns past cols=40",
         dataclasses.replace(weight, bitmap=stray, row_offsets=row_offsets_from_bitmap(stray),
                             values=torch.cat((weight.values, weight.values[:1])))),
    ]
    for message, bad in cases:
        with pytest.raises(ValueError, match=r"BitmapWeight: the bitmap weight is corrupt: " + message):
            bad.validate()
        with pytest.raises(ValueError, match=r"Csr16Weight.from_bitmap: the bitmap weight is corrupt: " + message):
            Csr16Weight.from_bitmap(bad)
        # The module checks each tensor's shape against row_offsets first: a wrong count is named there.
        shape_error = not ("must be \\d+ \\(marks" in message or "marks columns past" in message)
        tensors = {"values": bad.values, "bitmap": bad.bitmap, "row_offsets": bad.row_offsets}
        with pytest.raises(ValueError, match=r"SparseLinear: tensor '\w+' of a 'unstructured' 8x40" if shape_error
                           else r"SparseLinear: the bitmap weight is corrupt: " + message):
            prunekit.nn.SparseLinear(40, 8, format="unstructured", tensors=tensors)
