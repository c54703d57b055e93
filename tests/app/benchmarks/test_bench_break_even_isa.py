"""The break-even benchmark per kind of CPU kernels: a forced ISA, the environment that holds dense
torch to it, and the table entry printed for prunekit/nn/auto.py."""

import pytest
import torch

import prunekit
from prunekit.app.benchmarks import break_even


@pytest.mark.skipif("avx2" not in prunekit.build_info()["cpu_isas_runnable"], reason="needs the AVX2 kernels")
def test_a_forced_isa_is_measured_and_restored():
    before = prunekit.build_info()["cpu_isa_selected"]
    rows = break_even.run(True, sparsities=(0.9,), min_time=0.001, rounds=1, cold_bytes=1 << 16, isa="avx2")
    assert {row["isa"] for row in rows} == {"avx2"}
    assert prunekit.build_info()["cpu_isa_selected"] == before
    table = break_even.break_even_table(rows)
    assert {row["table_break_even"] for row in table} <= {None} | {
        entry[1] for tables in prunekit.nn.BREAK_EVEN_SPARSITY_BY_ISA["avx2"].values()
        for table_rows in tables.values() for entry in table_rows}


def test_dense_isa_environment_and_bad_isas():
    assert break_even.dense_isa_env("avx2") == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                                "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert break_even.dense_isa_env("avx512") == {} and break_even.dense_isa_env(None) == {}
    with pytest.raises(ValueError, match=r"argument 'isa' must be one of \['avx2', 'avx512'\] or None, but got 'sse'"):
        break_even.run(True, isa="sse")
    info = break_even.isa_info()
    assert info["cpu_isa_selected"] == prunekit.build_info()["cpu_isa_selected"]
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    with pytest.raises(ValueError, match="the rows must come from one kind of kernels"):
        break_even.break_even_table([{"isa": "avx2", "kernel": "linear", "dtype": "float32", "rows": 1,
                                      "sparsity": 0.5, "speedup": 1.0},
                                     {"isa": "avx512", "kernel": "linear", "dtype": "float32", "rows": 1,
                                      "sparsity": 0.5, "speedup": 1.0}])


def test_table_entry_is_the_python_table():
    def row(kernel, dtype, rows, measured):
        return {"kernel": kernel, "dtype": dtype, "rows": rows, "measured_break_even": measured}

    table = [row("linear", "float32", 1, 0.5), row("linear", "float32", 4, 0.5), row("linear", "float32", 16, 0.6),
             row("linear", "float32", 128, 0.7), row("linear", "bfloat16", 1, 0.5),
             row("linear", "bfloat16", 16, None), row("conv1x1", "float32", 1, 0.6)]
    text = break_even.table_entry(table)
    assert eval(text, {"torch": torch}) == {
        "linear": {torch.float32: ((4, 0.5), (16, 0.6), (None, 0.7)), torch.bfloat16: ((1, 0.5), (None, None))},
        "conv1x1": {torch.float32: ((None, 0.6),)}, "conv": {}}
