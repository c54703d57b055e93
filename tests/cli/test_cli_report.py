"""The pieces behind the command: output directories, report tables and plots, the offline text
and calibration windows, benchmark summaries (in process, fast)."""

import logging

import pytest
import torch

from prunekit.app import evaluation
from prunekit.app import report as reports
from prunekit.app.benchmarks.common import geomean, summarize_speedups

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_prepare_output_dir(tmp_path):
    out = reports.prepare_output_dir(tmp_path / "a" / "b", overwrite=False)
    assert out.is_dir() and not any(out.iterdir())
    (out / "report.json").write_text("{}")
    (out / "model").mkdir()
    (out / "model" / "weights").write_text("old")
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        reports.prepare_output_dir(out, overwrite=False)
    reports.prepare_output_dir(out, overwrite=True, produced=("report.json", "model", "absent.png"))
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    with pytest.raises(ValueError, match="is not a directory"):
        reports.prepare_output_dir(out / "mine.txt", overwrite=True)
    with pytest.raises(ValueError, match="cannot write"):
        reports.prepare_output_dir(out / "mine.txt" / "sub", overwrite=False)


def test_tables_show_the_same_numbers():
    rows = [{"name": "a", "x": 0.123456, "y": None}, {"name": "b", "x": 2.0, "y": float("nan")}]
    columns = [("name", "name", ""), ("x", "value", ".3f"), ("y", "other", ".1f")]
    markdown = reports.markdown_table(rows, columns)
    text = reports.text_table(rows, columns)
    for cell in ("0.123", "2.000", "-"):
        assert cell in markdown and cell in text
    assert markdown.splitlines()[0] == "| name | value | other |"


def _prune_report(method, values):
    return {"method": method, "sparsity": 0.5, "layers": [
        {"name": f"encoder.layer.{i}.dense", "sparsity": 0.5, "reconstruction_error": v} for i, v in enumerate(values)]}


def test_plots_are_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"method": m, "sparsity": s, "target_sparsity": 0.5 if s != "0.7" else 0.7, "mean_cosine": c}
            for m, s, c in [("magnitude", "0.5", 0.7), ("magnitude", "2:4", 0.6), ("wanda", "0.5", 0.85),
                            ("wanda", "0.7", 0.6), ("wanda", "2:4", 0.75)]]
    written = reports.draw_plots(tmp_path, {
        reports.LAYERS_PNG: lambda p: reports.plot_layers(p, {"magnitude 0.5": _prune_report("magnitude", [0.1, 0.2]),
                                                              "wanda 0.5": _prune_report("wanda", [0.05, None])}),
        reports.QUALITY_PNG: lambda p: reports.plot_quality(p, rows, "mean_cosine", "mean cosine", dense_value=1.0),
        reports.SPEEDUP_PNG: lambda p: reports.plot_speedup(p, {"linear b1": [(0.5, 1.2), (0.9, 3.0)]},
                                                            {"linear b1 2:4": [(0.5, 1.1)]}),
    })
    assert [p.name for p in written] == [reports.LAYERS_PNG, reports.QUALITY_PNG, reports.SPEEDUP_PNG]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in written)


def test_without_matplotlib_the_plots_are_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reports, "have_matplotlib", lambda: False)
    with caplog.at_level(logging.WARNING, logger="prunekit.app.report"):
        assert reports.draw_plots(tmp_path, {"x.png": lambda p: pytest.fail("drew a plot")}) == []
    assert "matplotlib is not installed" in caplog.text


def test_report_json_has_no_nan(tmp_path):
    path = reports.write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.5, float("inf")], "c": tmp_path})
    assert path.read_text().replace(" ", "").replace("\n", "") == f'{{"a":null,"b":[1.5,null],"c":"{tmp_path}"}}'


def test_offline_text():
    paragraphs = evaluation.docstring_paragraphs(("json", "textwrap"))
    assert len(paragraphs) > 20 and all(len(p) >= 40 and ">>>" not in p[:3] for p in paragraphs)
    assert paragraphs == evaluation.docstring_paragraphs(("json", "textwrap"))  # deterministic
    # calibration and evaluation text never overlap
    assert not set(evaluation.docstring_paragraphs(evaluation.CALIBRATION_MODULES)) & set(
        evaluation.docstring_paragraphs(evaluation.EVALUATION_MODULES))
    assert not set(evaluation.docstring_sentences(evaluation.CALIBRATION_MODULES, 1000)) & set(
        evaluation.docstring_sentences(evaluation.EVALUATION_MODULES, 1000))


def test_read_text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("First  paragraph\nstill first.\n\nSecond one.\n")
    assert evaluation.read_text_file(path) == ["First paragraph still first.", "Second one."]
    path.write_text("line one\nline two\n")
    assert evaluation.read_text_file(path) == ["line one", "line two"]
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="--calib: cannot read"):
        evaluation.read_text_file(path, "--calib")
    with pytest.raises(ValueError, match="is a directory"):
        evaluation.read_text_file(tmp_path)


class _CharTokenizer:
    """Token id = byte value (enough for windowing)."""

    bos_token_id = 1

    def __call__(self, text, **kwargs):
        return {"input_ids": torch.tensor([list(text.encode())])}


def test_lm_windows_are_seeded():
    text = ["some calibration text " * 20, "and more of it " * 20]
    first = evaluation.lm_windows(_CharTokenizer(), text, nsamples=5, seqlen=32, seed=0, batch_size=2)
    again = evaluation.lm_windows(_CharTokenizer(), text, nsamples=5, seqlen=32, seed=0, batch_size=2)
    other = evaluation.lm_windows(_CharTokenizer(), text, nsamples=5, seqlen=32, seed=1, batch_size=2)
    assert [b["input_ids"].shape for b in first] == [(2, 32), (2, 32), (1, 32)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))
    windows = evaluation.lm_eval_windows(_CharTokenizer(), text, seqlen=64, max_windows=3, batch_size=8)
    assert [b["input_ids"].shape for b in windows] == [(3, 64)]
    short = evaluation.lm_windows(_CharTokenizer(), ["tiny"], nsamples=2, seqlen=64, seed=0)
    assert short[0]["input_ids"].shape == (2, 5)  # bos + 4 characters
    random_ids = evaluation.random_token_batches(100, nsamples=3, seqlen=8, seed=0, batch_size=2)
    assert [b["input_ids"].shape for b in random_ids] == [(2, 8), (1, 8)]
    assert int(max(b["input_ids"].max() for b in random_ids)) < 100


def test_speedup_summary():
    rows = [{"p": "50%", "s": 2.0}, {"p": "50%", "s": 8.0}, {"p": "2:4", "s": 0.5}, {"p": "2:4", "s": None}]
    summary = summarize_speedups("linear", rows, ["p"], "s", "F.linear")
    assert [(r["case"], r["speedup"], r["min"], r["max"], r["n"]) for r in summary] == [
        ("50%", pytest.approx(4.0), 2.0, 8.0, 2), ("2:4", pytest.approx(0.5), 0.5, 0.5, 1)]
    assert geomean([]) != geomean([])  # NaN when there is nothing to average


def test_break_even_table():
    from prunekit.app.benchmarks.break_even import break_even_table
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
    table = {(r["kernel"], r["rows"]): r for r in break_even_table(rows)}
    assert table["linear", 1]["measured_break_even"] == 0.7
    assert table["linear", 1]["speedup_at_lowest"] == 1.1 and table["linear", 1]["speedup_at_0.9"] == 1.5
    assert table["linear", 16]["measured_break_even"] is None
    assert table["conv1x1", 1]["measured_break_even"] == 0.9
    assert table["linear", 16]["table_break_even"] == break_even_sparsity("linear", torch.float32, 16) == 0.6


def test_break_even_run_times_the_modules():
    from prunekit.app.benchmarks import break_even

    threads = torch.get_num_threads()
    rows = break_even.run(True, sparsities=(0.9,), min_time=0.001, rounds=1, cold_bytes=1 << 16)
    assert torch.get_num_threads() == threads  # timed on 1 thread, then restored
    assert {(r["kernel"], r["dtype"], r["rows"]) for r in rows} == {
        ("linear", "float32", 1), ("linear", "float32", 16), ("linear", "bfloat16", 1), ("linear", "bfloat16", 16),
        ("conv1x1", "float32", 1)}
    assert all(r["sparse_us"] > 0 and r["dense_us"] > 0 and r["speedup"] == r["dense_us"] / r["sparse_us"]
               for r in rows)
