"""Benchmark plumbing: speed-up summaries, the cache size and the cold weight copies."""

import pytest
import torch

from prunekit.app.benchmarks import common
from prunekit.app.benchmarks.common import geomean, summarize_speedups


def test_speedup_summary():
    rows = [{"p": "50%", "s": 2.0}, {"p": "50%", "s": 8.0}, {"p": "2:4", "s": 0.5}, {"p": "2:4", "s": None}]
    summary = summarize_speedups("linear", rows, ["p"], "s", "F.linear")
    assert [(r["case"], r["speedup"], r["min"], r["max"], r["n"]) for r in summary] == [
        ("50%", pytest.approx(4.0), 2.0, 8.0, 2), ("2:4", pytest.approx(0.5), 0.5, 0.5, 1)]
    assert geomean([]) != geomean([])  # NaN when there is nothing to average


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
