"""The application's reports: output directories, tables in Markdown and text, plots, JSON."""

import logging

import pytest

from prunekit.app import report as reports

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
