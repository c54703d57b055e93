"""The "dense" format: the weight as it is, in the module's weight shape."""

import pytest
import torch
from hypothesis import given, settings

from prunekit import formats

from format_cases import assert_round_trip, sparse_weight, weights

DENSE = formats.get("dense")


@settings(max_examples=30, deadline=None)
@given(weights(dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64)))
def test_round_trips_exactly(matrix):
    state = assert_round_trip(DENSE, matrix)
    assert state["weight"].data_ptr() != matrix.data_ptr()  # a copy: the module owns its weight


def test_keeps_the_modules_weight_shape():
    conv = sparse_weight(8, 27, 0.5, torch.float32).reshape(8, 3, 3, 3)
    state = assert_round_trip(DENSE, conv.reshape(8, 27), weight_shape=(8, 3, 3, 3))
    assert state["weight"].shape == (8, 3, 3, 3) and torch.equal(state["weight"], conv)
    assert DENSE.parameter_names == ("weight",) and not DENSE.compressed


@pytest.mark.parametrize("weight, message", [
    (torch.zeros(8, 27), r"tensor 'weight' of a 'dense' 8x27 float32 weight must be float32 of shape \(8, 3, 3, 3\), "
                         r"but got float32 of shape \(8, 27\)"),
    (torch.zeros(8, 3, 3, 3, dtype=torch.float16), r"tensor 'weight' .* must be float32 of shape \(8, 3, 3, 3\), "
                                                   r"but got float16"),
])
def test_wrong_shapes_and_dtypes_are_named(weight, message):
    with pytest.raises(ValueError, match="owner: " + message):
        DENSE.check_state("owner", {"weight": weight}, 8, 27, torch.float32, (8, 3, 3, 3))
    with pytest.raises(ValueError, match=r"owner: a 'dense' weight is stored as tensors \['weight'\], but got "
                                         r"\['values'\]"):
        DENSE.from_checkpoint({"values": weight}, "owner")
