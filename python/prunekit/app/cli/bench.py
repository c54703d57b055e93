"""``prunekit bench``: prunekit's kernels timed against dense torch side by side
(:mod:`prunekit.app.benchmarks`); prints the speed-up ratios and optionally writes a report."""

from __future__ import annotations

import argparse
import json
import os

import torch

from .. import benchmarks
from .. import report as reports
from .common import positive_int


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` command and its options to ``commands`` (the subparsers of ``prunekit``)."""
    parser = commands.add_parser(
        "bench", parents=[common], help="kernel microbenchmarks with speed-ups against dense torch",
        description="Time prunekit's kernels against dense torch side by side in one process: linear "
                    "(sparse_linear vs F.linear), conv (sparse 1x1 conv vs F.conv2d), sparsegpt (the solver vs "
                    "the pure-PyTorch loop), formats (2:4 conversions vs torch's), and the CUDA families (when a GPU "
                    "and a CUDA build are present); print a summary table of speed-up ratios.")
    parser.add_argument("--quick", action="store_true", help="every benchmark once on small shapes (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON document to stdout (nothing else)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only these (repeatable or comma-separated): " + ", ".join(benchmarks.FAMILIES))
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", metavar="DIR", help="also write report.json, report.md and a speed-up plot here")
    parser.add_argument("--overwrite", action="store_true", help="replace prunekit's files in an existing DIR")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = []
    for item in args.only or list(benchmarks.FAMILIES):
        for name in item.split(","):
            benchmarks.family(name.strip())  # validates
            names.append(name.strip())
    out = reports.prepare_output_dir(args.out, args.overwrite, ("report.json", "report.md", reports.SPEEDUP_PNG)) \
        if args.out else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def on_row(name, row):
        if not args.json:
            print(f"{name:>9}: {benchmarks.family(name).describe(row)}", flush=True)

    result = benchmarks.run(names, quick=args.quick, progress=not args.quiet, on_row=on_row)
    columns = [("benchmark", "benchmark", ""), ("case", "case", ""), ("baseline", "against", ""),
               ("speedup", "speed-up (geomean)", ".2f"), ("min", "min", ".2f"), ("max", "max", ".2f"),
               ("n", "shapes", "")]
    if out is not None:
        sections = [("Summary: speed-up ratios", reports.markdown_table(result["summary"], columns))]
        for name, family_result in result["results"].items():
            if "skipped" in family_result:
                sections.append((name, f"Skipped: {family_result['skipped']}."))
            else:
                module = benchmarks.family(name)
                sections.append((f"{name}: {module.TITLE}", reports.markdown_table(
                    family_result["rows"], [(c, c, "") for c in module.COLUMNS])))
        plots = {}
        kernel_rows = [dict(r, label=f"linear {r['dtype']} b{r['batch']}")
                       for r in result["results"].get("linear", {}).get("rows", [])]
        kernel_rows += [dict(r, label=f"conv {r['layer'].split('.')[-1]}", pattern=f"{r['sparsity']:.0%}",
                             speedup_vs_dense=r["speedup"]) for r in result["results"].get("conv", {}).get("rows", [])]
        if kernel_rows:
            series, markers = reports.speedup_series(kernel_rows, ["label"])
            plots[reports.SPEEDUP_PNG] = lambda path: reports.plot_speedup(
                path, series, markers, title="prunekit CPU kernels against dense torch")
        written = [p.name for p in reports.draw_plots(out, plots)]
        machine = result["machine"]
        reports.write_markdown(out / "report.md", "prunekit bench", [("", "Machine: " + ", ".join(
            f"{k}={v}" for k, v in machine.items()))] + sections, [("speed-up against sparsity", f) for f in written])
        result["files"] = ["report.json", "report.md"] + written
        reports.write_json(out / "report.json", result)
    if args.json:
        print(json.dumps(reports.jsonable(result)))
    else:
        print("\nSpeed-up ratios: baseline time / prunekit time (> 1: prunekit is faster)")
        print(reports.text_table(result["summary"], columns))
        for name, family_result in result["results"].items():
            if "skipped" in family_result:
                print(f"{name}: skipped ({family_result['skipped']})")
        if out is not None:
            print(f"wrote {', '.join(os.fspath(out / f) for f in result['files'])}")
    return 0

