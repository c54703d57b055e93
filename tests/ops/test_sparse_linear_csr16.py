"""``sparse_linear_csr16`` against the references (the CSR16 format itself: tests/formats): dtypes,
odd shapes (remainders of the 4-way unrolled row loop), batches 1-3 (GEMV) and above (SpMM:
partial vectors and tiles, more than one tile), sparsities 0/0.5/0.9/1, columns past 32767
(negative int16), rows not in column order, every ISA variant, opcheck, torch.compile,
NaN-poisoned memory and bad input."""

import pytest
import torch
import torch.nn.functional as F

from prunekit import ops
from prunekit.formats import Csr16Weight
from prunekit.formats.csr16 import column_indices
from prunekit.ops import _reference as ref
from sparse_linear_helpers import sparse_weight, tolerance

SPARSITIES = [0.0, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 9, 16, 37, 130])
@pytest.mark.parametrize("shape", [(7, 33), (64, 256), (33, 1000), (5, 40000)])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_matches_reference(isa, dtype, batch, shape, sparsity):
    rows, cols = shape
    dense = sparse_weight(rows, cols, sparsity, dtype)
    weight = Csr16Weight.from_dense(dense)
    x = torch.randn(batch, cols).to(dtype)
    bias = torch.randn(rows).to(dtype)
    for b in (None, bias):
        out = ops.sparse_linear_csr16(x, weight.values, weight.col_indices, weight.row_offsets, cols, b)
        assert out.dtype == dtype and out.shape == (batch, rows)
        expected = F.linear(x.float(), dense.float(), None if b is None else b.float())
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype, cols))
        reference = ref.sparse_linear_csr16(x, weight.values, weight.col_indices, weight.row_offsets, cols, b)
        torch.testing.assert_close(out.float(), reference.float(), **tolerance(dtype, cols))


@pytest.mark.parametrize("batch", [1, 3, 16, 130])
def test_rows_out_of_column_order_give_each_nonzero_once(isa, batch):
    # The SpMM takes a row's nonzeros k-block by k-block as runs of ascending columns; a row in
    # any order must still count each nonzero once (columns far apart span several k-blocks).
    dense = sparse_weight(9, 3000, 0.9, torch.float32)
    weight = Csr16Weight.from_dense(dense)
    values, indices = weight.values.clone(), weight.col_indices.clone()
    generator = torch.Generator().manual_seed(1)
    for r in range(9):
        begin, end = int(weight.row_offsets[r]), int(weight.row_offsets[r + 1])
        order = begin + torch.randperm(end - begin, generator=generator)
        values[begin:end], indices[begin:end] = weight.values[order], weight.col_indices[order]
    x = torch.randn(batch, 3000)
    out = ops.sparse_linear_csr16(x, values, indices, weight.row_offsets, 3000)
    torch.testing.assert_close(out, F.linear(x, dense), **tolerance(torch.float32, 3000))


def test_leading_dims_empty_batch_and_fully_written_outputs():
    dense = sparse_weight(33, 70, 0.9, torch.float32)
    weight = Csr16Weight.from_dense(dense)
    args = (weight.values, weight.col_indices, weight.row_offsets, 70)
    x = torch.randn(2, 3, 70)
    torch.testing.assert_close(ops.sparse_linear_csr16(x, *args), F.linear(x, dense), rtol=1e-5, atol=1e-4)
    assert ops.sparse_linear_csr16(torch.randn(0, 70), *args).shape == (0, 33)
    for batch in (1, 3, 7, 40):
        x = torch.randn(batch, 70)
        first = ops.sparse_linear_csr16(x, *args)
        torch.full((batch * 33 * 4,), float("nan"))  # dirty freed memory
        assert not bool(first.isnan().any())
        torch.testing.assert_close(first, F.linear(x, dense), rtol=1e-5, atol=1e-4)


def test_opcheck_and_compile():
    dense = sparse_weight(16, 40, 0.5, torch.float32)
    weight = Csr16Weight.from_dense(dense)
    args = (weight.values, weight.col_indices, weight.row_offsets, 40)
    op = torch.ops.prunekit.sparse_linear_csr16.default
    torch.library.opcheck(op, (torch.randn(3, 40), *args, torch.randn(16)))
    torch.library.opcheck(op, (torch.randn(9, 40), *args))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def forward(x):
        return ops.sparse_linear_csr16(x, *args).relu()

    x = torch.randn(2, 40)
    torch.testing.assert_close(forward(x), F.linear(x, dense).relu(), rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_clear_errors(isa):
    dense = sparse_weight(8, 40, 0.5, torch.float32)
    weight = Csr16Weight.from_dense(dense)
    values, indices, offsets = weight.values, weight.col_indices, weight.row_offsets
    x = torch.randn(2, 40)
    with pytest.raises(ValueError, match=r"last dimension of 'x' must be in_features=40, but got shape \[2, 39\]"):
        ops.sparse_linear_csr16(torch.randn(2, 39), values, indices, offsets, 40)
    with pytest.raises(ValueError, match=r"'col_indices' must have one entry per value \(\d+\), but got \d+"):
        ops.sparse_linear_csr16(x, values, indices[:-1].contiguous(), offsets, 40)
    with pytest.raises(ValueError, match=r"'row_offsets' must start at 0 and end at values.numel\(\)=\d+, but got "
                                         r"0 and \d+ \(truncated"):
        ops.sparse_linear_csr16(x, values[:-1].contiguous(), indices[:-1].contiguous(), offsets, 40)
    shuffled = offsets.clone()
    shuffled[3] = shuffled[4] + 1
    with pytest.raises(ValueError, match=r"must be non-decreasing, but entry 4 \(\d+\) is below entry 3"):
        ops.sparse_linear_csr16(x, values, indices, shuffled, 40)
    # Entries far outside [0, nnz] (where a difference of two entries would overflow) are caught too.
    for entry, value in ((1, -1), (1, -2**63), (2, 2**62), (2, 2**63 - 1)):
        out_of_range = offsets.clone()
        out_of_range[entry] = value
        with pytest.raises(ValueError, match=r"must be non-decreasing, but entry \d \(-?\d+\) is below entry \d"):
            ops.sparse_linear_csr16(x, values, indices, out_of_range, 40)
    past_k = indices.clone()
    past_k[int(offsets[2])] = 40  # row 2 names column 40 of a 40-column weight
    for batch in (0, 1, 4, 9, 130):
        with pytest.raises(ValueError, match=r"corrupt: row 2 of 'col_indices' names column 40, past in_features=40"):
            ops.sparse_linear_csr16(torch.randn(batch, 40), values, past_k, offsets, 40)
    wrapped = indices.clone()
    wrapped[0] = -1  # 65535 as an unsigned index
    with pytest.raises(ValueError, match=r"names column 65535"):
        ops.sparse_linear_csr16(x, values, wrapped, offsets, 40)
    with pytest.raises(ValueError, match=r"'in_features' must be in \[1, 65536\] \(16-bit column indices\), but "
                                         r"got 70000"):
        ops.sparse_linear_csr16(torch.randn(1, 70000), values, indices, offsets, 70000)
    with pytest.raises(ValueError, match=r"'col_indices' must have dtype Short, but got Long"):
        ops.sparse_linear_csr16(x, values, indices.long(), offsets, 40)
    with pytest.raises(ValueError, match=r"'values' must have dtype one of Float, BFloat16, but got Half"):
        ops.sparse_linear_csr16(x, values.half(), indices, offsets, 40)
    with pytest.raises(ValueError, match=r"'bias' must have shape \[8\], but got \[7\]"):
        ops.sparse_linear_csr16(x, values, indices, offsets, 40, torch.randn(7))
    with pytest.raises(ValueError, match=r"'row_offsets' must have rows \+ 1 >= 2 entries, but got 1"):
        ops.sparse_linear_csr16(x, values[:0], indices[:0], offsets[:1].contiguous(), 40)
    with pytest.raises(ValueError, match=r"at most 65536 columns, but the weight has 70000"):
        column_indices(torch.zeros(1, 4375, dtype=torch.int16), 70000)
