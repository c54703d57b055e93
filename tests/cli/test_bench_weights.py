"""How the linear benchmark hands out weights: cold copies that together exceed the largest cache."""

import pytest
import torch

from prunekit.app.benchmarks import common, linear


def test_largest_cache_is_a_positive_size():
    assert common.largest_cache_bytes() >= 1 << 16


def test_cold_copies_together_exceed_the_cache_and_rotate():
    made = []

    def make():
        made.append(torch.zeros(256))
        return made[-1]

    next_copy = common.cold_copies(make, 1024, cache_bytes=10_000)
    assert len(made) == 10 and len(made) * 1024 > 10_000
    handed = [next_copy() for _ in range(25)]
    assert [id(t) for t in handed] == [id(made[i % 10]) for i in range(25)]
    assert len(made) == 10  # made once, up front
    common.cold_copies(make, 1 << 30, cache_bytes=10_000)
    assert len(made) == 12  # at least two
    common.cold_copies(make, 1, cache_bytes=10_000, max_copies=5)
    assert len(made) == 17  # at most max_copies


def test_linear_bench_rows_say_how_weights_were_read():
    shapes = {"tiny": (64, 128)}
    for weights in ("cold", "warm"):
        rows = linear.run(shapes=shapes, batches=(1,), patterns=("90%",), dtypes=(torch.float32,),
                          min_run_time=0.01, csr=False, weights=weights)
        assert [row["weights"] for row in rows] == [weights]
        assert rows[0]["speedup_vs_dense"] > 0
    with pytest.raises(ValueError, match=r"weights must be one of cold, warm, but got 'hot'"):
        linear.run(shapes=shapes, weights="hot")


def test_kernel_copy_is_an_equal_copy():
    tensors = (torch.randn(3 << 20), torch.arange(10))
    copies = linear.kernel_copy(tensors)
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(copies, tensors))
