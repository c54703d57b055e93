""""auto" chooses by the kind of CPU kernels that will run (the selected ISA), never by one
machine's table applied to all: AVX-512 and AVX2 have their own tables, a kind without one keeps
dense, and PRUNEKIT_AUTO=measure measures this machine once and caches the table."""

import json
import logging

import pytest
import torch

import prunekit
from prunekit.nn import SparseLinear, auto, measure
from prunekit.nn.auto import WeightStats, choose_format

RUNNABLE = prunekit.build_info()["cpu_isas_runnable"]


@pytest.fixture
def cpu_isa():
    yield lambda isa: prunekit._C._set_cpu_isa(isa)
    prunekit._C._set_cpu_isa("")


def sparse_weight(sparsity: float, dtype=torch.float32, shape=(64, 64), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)  # no exact zeros: the sparsity is exactly as given
    zeros = torch.randperm(weight.numel(), generator=generator)[:round(sparsity * weight.numel())]
    weight.view(-1)[zeros] = 0
    return weight.to(dtype)


@pytest.mark.skipif("avx512" not in RUNNABLE or "avx2" not in RUNNABLE, reason="needs the AVX-512 and AVX2 kernels")
def test_the_table_is_that_of_the_kernels_that_run(cpu_isa, monkeypatch):
    stats = WeightStats.of(sparse_weight(0.6))
    cpu_isa("avx512")
    assert auto.cpu_kernel_kind() == "avx512"
    assert auto.break_even_sparsity("linear", torch.float32, rows=1) == 0.5
    assert choose_format(stats, "linear", rows=1)[0] == "unstructured"
    cpu_isa("avx2")
    assert auto.cpu_kernel_kind() == "avx2"
    if not auto.BREAK_EVEN_SPARSITY_BY_ISA["avx2"]:  # not measured yet: dense, and says why
        assert auto.break_even_sparsity("linear", torch.float32, rows=1) is None
        fmt, reason = choose_format(stats, "linear", rows=1)
        assert fmt == "dense" and "no break-even table for prunekit's avx2 CPU kernels" in reason
        assert "PRUNEKIT_AUTO=measure" in reason
    # the AVX2 table, whatever it holds, is the one that decides while the AVX2 kernels run
    monkeypatch.setitem(auto.BREAK_EVEN_SPARSITY_BY_ISA, "avx2", {"linear": {torch.float32: ((None, 0.55),)}})
    assert auto.break_even_sparsity("linear", torch.float32, rows=1) == 0.55
    assert choose_format(stats, "linear", rows=1)[0] == "unstructured"
    assert choose_format(WeightStats.of(sparse_weight(0.5)), "linear", rows=1)[0] == "dense"
    assert auto.break_even_sparsity("linear", torch.float32, rows=1, kind="avx512") == 0.5
    cpu_isa("avx512")
    assert choose_format(WeightStats.of(sparse_weight(0.5)), "linear", rows=1)[0] == "unstructured"


def test_kinds_without_a_table_keep_dense(cpu_isa):
    cpu_isa("scalar")
    fmt, reason = choose_format(WeightStats.of(sparse_weight(0.9)), "linear", rows=1)
    assert fmt == "dense" and "no break-even table for prunekit's scalar CPU kernels" in reason
    # an explicit break-even still applies (the caller measured it)
    assert choose_format(WeightStats.of(sparse_weight(0.9)), "linear", break_even=0.5)[0] == "unstructured"
    assert SparseLinear.from_dense(torch.nn.Linear(64, 64), "auto").format == "dense"


def test_formats_each_kind_runs(monkeypatch):
    for kind in ("avx512", "avx2", "neon", "scalar"):
        assert auto.cpu_format_problem("unstructured", kind=kind) is None
        assert auto.cpu_format_problem("2:4", kind=kind) is None
        assert auto.cpu_format_problem("dense", kind=kind) is None
    assert auto.cpu_format_problem("unstructured", kind="riscv") == (
        "prunekit has no riscv CPU kernel for format 'unstructured'")
    monkeypatch.setitem(auto.CPU_KERNEL_FORMATS, "avx2", ("unstructured",))
    assert auto.cpu_format_problem("2:4", kind="avx2") == "prunekit has no avx2 CPU kernel for format '2:4'"


def test_tables_from_measured_rows():
    def row(dtype, rows, sparsity, speedup):
        return {"kernel": "linear", "dtype": dtype, "rows": rows, "sparsity": sparsity, "speedup": speedup}

    rows = [row("float32", 1, 0.5, 1.2), row("float32", 1, 0.7, 1.5), row("float32", 1, 0.9, 2.0),
            row("float32", 16, 0.5, 0.8), row("float32", 16, 0.7, 0.98), row("float32", 16, 0.9, 1.3),
            row("bfloat16", 1, 0.5, 0.9), row("bfloat16", 1, 0.7, 1.1), row("bfloat16", 1, 0.9, 0.95),
            row("bfloat16", 16, 0.5, 0.5), row("bfloat16", 16, 0.7, 0.6), row("bfloat16", 16, 0.9, 0.7)]
    tables = measure.tables_from_rows(rows)
    # a win must hold at every sparsity above (bf16 at 1 row loses again at 0.9: never)
    assert tables == {"linear": {torch.float32: ((1, 0.5), (None, 0.7)), torch.bfloat16: ((1, None), (None, None))}}


@pytest.fixture
def tiny_measurement(monkeypatch, tmp_path):
    """PRUNEKIT_AUTO=measure with a measurement small enough for a test and a private cache."""
    monkeypatch.setenv("PRUNEKIT_AUTO", "measure")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(measure, "SHAPE", (64, 128))
    monkeypatch.setattr(measure, "SPARSITIES", (0.5, 0.9))
    monkeypatch.setattr(measure, "ROWS", (1, 16))
    monkeypatch.setattr(measure, "MIN_TIME", 0.002)
    monkeypatch.setattr(measure, "COLD_BYTES", 1 << 16)
    monkeypatch.setattr(measure, "_TABLES", {})
    return tmp_path / "cache" / "auto"


def test_measure_mode_measures_once_and_caches_per_machine(tiny_measurement, cpu_isa, monkeypatch):
    cpu_isa("scalar")
    tables, source = auto.cpu_break_even_tables()
    assert source == "measured on this machine (scalar kernels)"
    assert set(tables) == {"linear"} and set(tables["linear"]) == {torch.float32, torch.bfloat16}
    for table in tables["linear"].values():
        assert [entry[0] for entry in table] == [1, None]
        assert all(entry[1] in (None, 0.5, 0.9) for entry in table)
    assert prunekit.build_info()["cpu_isa_selected"] == "scalar"  # the measurement put the kind back
    files = list(tiny_measurement.glob("break_even-scalar-*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    assert cached["key"]["kind"] == "scalar" and cached["key"]["cpu"]
    assert {row["rows"] for row in cached["rows"]} == {1, 16}
    # the choice follows the measured table
    threshold = tables["linear"][torch.float32][0][1]
    stats = WeightStats.of(sparse_weight(0.9))  # 3686 zeros of 4096: just under 0.9
    fmt, why = choose_format(stats, "linear", rows=1)
    assert fmt == ("dense" if threshold is None or stats.sparsity < threshold else "unstructured"), why
    # a new process reads the cache instead of measuring
    monkeypatch.setattr(measure, "_TABLES", {})
    monkeypatch.setattr(measure, "measure", lambda *args, **kwargs: pytest.fail("measured again"))
    assert auto.cpu_break_even_tables()[0] == tables


def test_measure_mode_without_a_writable_cache_warns_and_still_chooses(tiny_measurement, tmp_path, monkeypatch,
                                                                       caplog, cpu_isa):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(blocker))
    cpu_isa("scalar")
    with caplog.at_level(logging.WARNING, logger="prunekit.nn.measure"):
        tables, _ = auto.cpu_break_even_tables()
    assert "linear" in tables
    assert "cannot write the measured table" in caplog.text and "PRUNEKIT_CACHE" in caplog.text


def test_a_bad_auto_mode_is_named(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_AUTO", "fastest")
    with pytest.raises(ValueError, match=r"environment variable PRUNEKIT_AUTO must be one of \('tables', 'measure'\) "
                                         r"\(or unset\), but got 'fastest'"):
        choose_format(WeightStats.of(sparse_weight(0.9)), "linear")
