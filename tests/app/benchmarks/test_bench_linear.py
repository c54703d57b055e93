"""The linear benchmark: the rows it reports, and how it hands out weights (cold copies that
together exceed the largest cache, or one warm copy)."""

import pytest
import torch

from prunekit.app.benchmarks import linear


def test_linear_bench_rows_say_how_weights_were_read():
    shapes = {"tiny": (64, 128)}
    for weights in ("cold", "warm"):
        rows = linear.run(shapes=shapes, batches=(1, 4), patterns=("90%",), dtypes=(torch.float32,),
                          min_run_time=0.01, csr=False, weights=weights)
        assert [(r["shape"], r["dtype"], r["pattern"], r["batch"], r["weights"]) for r in rows] == [
            ("tiny", "float32", "90%", 1, weights), ("tiny", "float32", "90%", 4, weights)]
        for row in rows:
            assert set(linear.COLUMNS) <= row.keys() and row["sparsity"] == 0.9 and row["csr_ms"] is None
            assert row["speedup_vs_dense"] == row["dense_ms"] / row["prunekit_ms"]
            assert row["effective_gflops"] == pytest.approx(2 * row["batch"] * 64 * 128 / row["prunekit_ms"] / 1e6)
            assert row["actual_gflops"] < row["effective_gflops"]  # only the nonzeros count
        assert rows[0]["weight_GB_s"] is not None and rows[1]["weight_GB_s"] is None  # bandwidth at batch 1 only
    with pytest.raises(ValueError, match=r"weights must be one of cold, warm, but got 'hot'"):
        linear.run(shapes=shapes, weights="hot")


@pytest.mark.parametrize("pattern", ["50%", "90%", "2:4"])
def test_the_timed_weight_computes_what_the_dense_one_does(pattern):
    """The benchmark times prunekit against F.linear on the same weight: its compressed weight
    gives F.linear's result."""
    from prunekit import ops

    dense, weight = linear.make_weight(64, 64, pattern, torch.float32, torch.Generator().manual_seed(0))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    assert 1 - weight.values.numel() / dense.numel() == pytest.approx(linear.pattern_sparsity(pattern), abs=0.05)
    sparse = ops.sparse_linear(x, *linear.kernel_copy((weight.values, weight.bitmap, weight.row_offsets)), 64)
    torch.testing.assert_close(sparse, torch.nn.functional.linear(x, dense))


def test_kernel_copy_is_an_equal_copy():
    tensors = (torch.randn(3 << 20), torch.arange(10))
    copies = linear.kernel_copy(tensors)
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(copies, tensors))
