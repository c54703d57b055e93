"""Random weights for the format tests: hypothesis strategies over shapes, dtypes and sparsities
(0 and 1 included), and the round trip every format must pass."""

import torch
from hypothesis import strategies as st

from prunekit.ops import _reference as ref

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SPARSITIES = st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)


def sparse_weight(rows, cols, sparsity, dtype, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    weight[torch.rand(rows, cols, generator=generator) < sparsity] = 0
    return weight.to(dtype)


def random_24(rows, cols, dtype, generator, zero_fraction=0.0) -> torch.Tensor:
    """A random 2:4 sparse matrix: 2 of every 4 kept, plus extra zeros (groups with 0 or 1 nonzero)."""
    dense = torch.randn(rows, cols, generator=generator) * 20
    dense = dense * ref.nm_mask(torch.rand(rows, cols, generator=generator), 2, 4)
    dense[torch.rand(rows, cols, generator=generator) < zero_fraction] = 0
    if dtype == torch.int8:
        return dense.clamp(-127, 127).round().to(torch.int8)
    return dense.to(dtype)


@st.composite
def weights(draw, dtypes=FLOAT_DTYPES, max_rows=40, max_cols=100):
    dtype = draw(st.sampled_from(dtypes))
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    return sparse_weight(rows, cols, draw(SPARSITIES), dtype, draw(st.integers(0, 2**31 - 1)))


@st.composite
def weights_24(draw, dtypes=FLOAT_DTYPES):
    """2:4 weights in shapes the layout holds (rows and columns multiples of 32)."""
    dtype = draw(st.sampled_from(dtypes))
    rows, cols = 32 * draw(st.integers(1, 3)), 32 * draw(st.integers(1, 4))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return random_24(rows, cols, dtype, generator, draw(SPARSITIES))


def assert_round_trip(fmt, matrix, weight_shape=None):
    """compress -> checks pass -> exact dense; the checkpoint entry back to the same state."""
    rows, cols = matrix.shape
    state = fmt.compress(matrix, "test", weight_shape)
    assert set(state) == set(fmt.state_names)
    fmt.check_state("test", state, rows, cols, matrix.dtype, weight_shape)
    dense = fmt.to_dense(state, rows, cols)
    assert dense.dtype == matrix.dtype and torch.equal(dense, matrix)
    assert fmt.nonzeros(state) == int(torch.count_nonzero(matrix))
    entry = fmt.to_checkpoint(state)
    assert set(entry) == set(fmt.checkpoint_names)
    again = fmt.from_checkpoint(entry, "test")
    fmt.check_state("test", again, rows, cols, matrix.dtype, weight_shape)
    assert set(again) == set(state) and all(torch.equal(again[key], state[key]) for key in state)
    return state
