"""The break-even benchmark: from which sparsity the sparse modules beat dense torch."""

import torch

from prunekit.app.benchmarks import break_even


def test_break_even_table():
    from prunekit.nn import break_even_sparsity

    def row(kernel, rows, sparsity, shape, speedup):
        return {"kernel": kernel, "dtype": "float32", "shape": shape, "rows": rows, "sparsity": sparsity,
                "speedup": speedup}

    rows = [
        # wins from 0.7 on both shapes (a tie within 3% counts); 0.6 loses on one
        *(row("linear", 1, s, "a", 1.5) for s in (0.5, 0.6, 0.7, 0.9)),
        row("linear", 1, 0.5, "b", 1.1), row("linear", 1, 0.6, "b", 0.96), row("linear", 1, 0.7, "b", 0.98),
        row("linear", 1, 0.9, "b", 2.0),
        # a loss at the top sparsity: no break-even, whatever lies below
        row("linear", 16, 0.5, "a", 1.2), row("linear", 16, 0.9, "a", 0.8),
        # the worst repeat of a case counts
        row("conv1x1", 1, 0.5, "a", 1.3), row("conv1x1", 1, 0.5, "a", 0.9), row("conv1x1", 1, 0.9, "a", 3.0),
    ]
    table = {(r["kernel"], r["rows"]): r for r in break_even.break_even_table(rows)}
    assert table["linear", 1]["measured_break_even"] == 0.7
    assert table["linear", 1]["speedup_at_lowest"] == 1.1 and table["linear", 1]["speedup_at_0.9"] == 1.5
    assert table["linear", 16]["measured_break_even"] is None
    assert table["conv1x1", 1]["measured_break_even"] == 0.9
    # the table column is what "auto" uses now for the rows' kind of kernels (no "isa": AVX-512)
    assert table["linear", 16]["table_break_even"] == break_even_sparsity("linear", torch.float32, 16,
                                                                          kind="avx512") == 0.6


def test_break_even_run_times_the_modules():
    threads = torch.get_num_threads()
    rows = break_even.run(True, sparsities=(0.9,), min_time=0.001, rounds=1, cold_bytes=1 << 16)
    assert torch.get_num_threads() == threads  # timed on 1 thread, then restored
    assert {(r["kernel"], r["dtype"], r["rows"]) for r in rows} == {
        ("linear", "float32", 1), ("linear", "float32", 16), ("linear", "bfloat16", 1), ("linear", "bfloat16", 16),
        ("conv1x1", "float32", 1)}
    assert all(r["sparse_us"] > 0 and r["dense_us"] > 0 and r["speedup"] == r["dense_us"] / r["sparse_us"]
               for r in rows)
