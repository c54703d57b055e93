"""Reports of prunekit runs: report.json (everything, full precision), report.md (tables) and PNG
plots (matplotlib, Agg backend: per-layer sparsity and reconstruction error, quality against
sparsity per method, speed-up against sparsity per kernel).

matplotlib is imported only when a plot is drawn; without it the JSON and Markdown are still
written and a warning says the plots were skipped (``pip install matplotlib``, or the ``demo``
extra). Nothing here prints.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LAYERS_PNG = "layers.png"
QUALITY_PNG = "quality_vs_sparsity.png"
SPEEDUP_PNG = "speedup_vs_sparsity.png"


# ----------------------------------------------------------------------------- output directory

def prepare_output_dir(path: str | os.PathLike, overwrite: bool, produced: Sequence[str] = ()) -> Path:
    """Creates ``path`` (and its parents) and checks that files can be written in it.

    An existing non-empty directory is refused unless ``overwrite``; then the entries named in
    ``produced`` (files or directories this run writes) are removed first, nothing else. Raises
    ValueError with a one-line reason (exists, not a directory, not writable)."""
    import shutil
    import tempfile

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {os.fspath(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out: {os.fspath(out)!r} exists and is not empty; pass --overwrite to replace "
                             "prunekit's files in it, or choose another directory")
        for name in produced:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".prunekit-write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"--out: cannot write to {os.fspath(out)!r}: {error.strerror or error}") from None
    return out


# ----------------------------------------------------------------------------- JSON and Markdown

def jsonable(value):
    """``value`` with NaN/infinities as None and paths as strings (for json.dumps)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """``data`` as indented JSON (NaN and infinities as null)."""
    path = Path(path)
    path.write_text(json.dumps(jsonable(data), indent=2) + "\n")
    return path


def format_value(value, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if spec:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table; ``columns`` are (key, header, format spec) triples."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(key), spec) for key, _, spec in columns) + " |")
    return "\n".join(lines)


def text_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """The same table as :func:`markdown_table`, aligned for a terminal (the same numbers)."""
    cells = [[header for _, header, _ in columns]]
    cells += [[format_value(row.get(key), spec) for key, _, spec in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_markdown(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, str]],
                   images: Sequence[tuple[str, str]] = ()) -> Path:
    """A Markdown report: a title, then (heading, body) sections, then images (caption, file)."""
    text = [f"# {title}", ""]
    for heading, body in sections:
        if heading:
            text += [f"## {heading}", ""]
        text += [body.rstrip(), ""]
    if images:
        text += ["## Plots", ""]
        for caption, file in images:
            text += [f"![{caption}]({file})", ""]
    path = Path(path)
    path.write_text("\n".join(text))
    return path


# ----------------------------------------------------------------------------- plots

def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short_layer_name(name: str) -> str:
    """"encoder.layer.3.attention.self.query" -> "3.attention.self.query"."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[i:])
    return name


def plot_layers(path: str | os.PathLike, reports: dict[str, dict]) -> Path:
    """Per-layer sparsity (top) and relative reconstruction error (bottom, log scale) of one or
    more prune reports ({label: PruneReport.to_dict()}), layers in model order."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    names: list[str] = []
    for report in reports.values():
        for layer in report["layers"]:
            if layer["name"] not in names:
                names.append(layer["name"])
    index = {name: i for i, name in enumerate(names)}
    # Colour by the first word of the label (the method), line style by the rest (the sparsity).
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    colour_of = {key: colours[i % len(colours)]
                 for i, key in enumerate(dict.fromkeys(l.split(" ")[0] for l in reports))}
    style_of = {key: styles[i % len(styles)]
                for i, key in enumerate(dict.fromkeys(" ".join(l.split(" ")[1:]) for l in reports))}
    for label, report in reports.items():
        xs = [index[layer["name"]] for layer in report["layers"]]
        style = dict(color=colour_of[label.split(" ")[0]], linestyle=style_of[" ".join(label.split(" ")[1:])],
                     marker=".", linewidth=1.2, label=label)
        top.plot(xs, [layer["sparsity"] for layer in report["layers"]], **style)
        errors = [(x, layer["reconstruction_error"]) for x, layer in zip(xs, report["layers"])
                  if layer["reconstruction_error"] is not None and layer["reconstruction_error"] > 0]
        if errors:
            bottom.plot([x for x, _ in errors], [e for _, e in errors], **style)
    top.set_ylabel("sparsity")
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(fontsize=7, ncol=3)
    bottom.set_ylabel("relative reconstruction error")
    bottom.set_yscale("log")
    bottom.grid(alpha=0.3, which="both")
    ticks = range(len(names))
    step = max(1, len(names) // 48)
    bottom.set_xticks(list(ticks)[::step])
    bottom.set_xticklabels([_short_layer_name(n) for n in names][::step], rotation=90, fontsize=6)
    top.set_title("Per-layer sparsity and reconstruction error ||X dW^T||^2 / ||X W^T||^2")
    return _save(fig, Path(path))


def plot_quality(path: str | os.PathLike, rows: Sequence[dict], metric: str, ylabel: str,
                 dense_value: float | None = None, higher_is_better: bool = True, title: str = "") -> Path:
    """Quality (``metric`` of each row) against achieved sparsity, one line per method over the
    unstructured runs; N:M runs as hollow markers; the dense model at sparsity 0 when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, method in enumerate(methods):
        colour = colours[k % len(colours)]
        mine = [row for row in rows if row["method"] == method and row.get(metric) is not None]
        unstructured = sorted((float(row["target_sparsity"]), row[metric]) for row in mine
                              if ":" not in str(row["sparsity"]))
        points = ([(0.0, dense_value)] if dense_value is not None else []) + unstructured
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", color=colour, label=method)
        for row in mine:
            if ":" in str(row["sparsity"]):
                ax.scatter([float(row["target_sparsity"])], [row[metric]], s=60, facecolors="none",
                           edgecolors=colour, linewidths=1.5, label=f"{method} {row['sparsity']}")
    if dense_value is not None:
        ax.axhline(dense_value, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("sparsity")
    ax.set_ylabel(ylabel + ("" if higher_is_better else " (lower is better)"))
    if not higher_is_better:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{ylabel} against sparsity")
    return _save(fig, Path(path))


def plot_speedup(path: str | os.PathLike, series: dict[str, Sequence[tuple[float, float]]],
                 markers: dict[str, Sequence[tuple[float, float]]] | None = None, title: str = "") -> Path:
    """Speed-up over dense torch against sparsity: ``series`` {label: [(sparsity, speed-up)]} as
    lines, ``markers`` {label: [(sparsity, speed-up)]} as single points (N:M patterns, whole
    models); a line at 1 marks break-even."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, points in series.items():
        points = sorted(points)
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    for k, (label, points) in enumerate((markers or {}).items()):
        ax.scatter([x for x, _ in points], [y for _, y in points], marker="*^sDv"[k % 5], s=80, zorder=3, label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("speed-up over dense torch (x)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title or "Speed-up against sparsity")
    return _save(fig, Path(path))


def draw_plots(out: Path, plots: dict[str, Callable[[Path], Path]]) -> list[Path]:
    """Calls each ``plots[file](out / file)``; returns the files written. Without matplotlib,
    writes none and warns once."""
    if not plots:
        return []
    if not have_matplotlib():
        logger.warning("matplotlib is not installed: the plots (%s) were skipped; pip install matplotlib",
                       ", ".join(plots))
        return []
    written = []
    for file, draw in plots.items():
        written.append(draw(out / file))
        logger.info("wrote %s", out / file)
    return written


def speedup_series(rows: Sequence[dict], label_keys: Sequence[str], speedup: str = "speedup_vs_dense"):
    """(series, markers) for :func:`plot_speedup` from benchmark rows with a ``sparsity`` and a
    ``pattern`` ("50%", "2:4"): unstructured rows become lines labelled by ``label_keys``, N:M
    rows markers."""
    series: dict[str, list] = {}
    markers: dict[str, list] = {}
    for row in rows:
        if row.get(speedup) is None:
            continue
        label = " ".join(str(row[k]) for k in label_keys)
        pattern = str(row.get("pattern", ""))
        if ":" in pattern:
            markers.setdefault(f"{label} {pattern}", []).append((row["sparsity"], row[speedup]))
        else:
            series.setdefault(label, []).append((row["sparsity"], row[speedup]))
    return series, markers
