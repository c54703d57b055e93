"""Where the CPU sparse kernels break even with dense torch, the data behind "auto"
(prunekit.nn.BREAK_EVEN_SPARSITY): SparseLinear / SparseConv2d vs nn.Linear / nn.Conv2d across
sparsity, rows per call and dtype, on 1 thread in CPU time with the weights cold in L2. The
logic lives in prunekit.app.benchmarks.break_even.

    python bench/bench_break_even.py [--quick] [--repeats N]   # writes bench/results/break_even_cpu[_quick].{json,md}
    python bench/bench_break_even.py --isa avx2   # the AVX2 table: prunekit's AVX2 kernels against dense torch
                                                  # held to AVX2; writes break_even_cpu_avx2.{json,md}
    python bench/bench_break_even.py --from-json results/break_even_cpu.json   # the table again, no timing
"""

import argparse
import json
import os
import sys

from _common import RESULTS_DIR

from prunekit.app.benchmarks import break_even
from prunekit.app.benchmarks.common import machine_info, markdown_table, write_results

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=break_even.QUICK)
    parser.add_argument("--repeats", type=int, default=2, help="measure everything this many times; the table "
                        "keeps each case's worst (default 2)")
    parser.add_argument("--isa", choices=sorted(break_even.DENSE_ISA_ENV), help="measure this kind of prunekit's "
                        "CPU kernels (restarts with dense torch held to the same ISA); default: the machine's own")
    parser.add_argument("--from-json", metavar="PATH", help="rows recorded by an earlier run: derive the table "
                        "again (e.g. after the tables in prunekit.nn changed) and rewrite its files")
    args = parser.parse_args()
    if args.isa and not args.from_json and break_even.dense_isa_missing(args.isa):
        # dense torch reads its ISA limits only at start: run again with them
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **break_even.dense_isa_env(args.isa)})
    if args.from_json:
        recorded = json.loads(open(args.from_json).read())
        rows, machine = recorded["rows"], recorded["machine"]
    else:
        rows = break_even.run(args.quick, repeats=args.repeats, isa=args.isa,
                              on_row=lambda row: print(break_even.describe(row), flush=True))
        machine = {**machine_info(), "threads": 1, **break_even.isa_info()}  # timed on 1 thread
        if args.isa:
            machine["cpu_isa_selected"] = args.isa  # forced while timing (restored after)
    table = break_even.break_even_table(rows)
    print(markdown_table(table, break_even.TABLE_COLUMNS))
    print("\nThe table for prunekit/nn/auto.py (BREAK_EVEN_SPARSITY_BY_ISA[...]):\n" + break_even.table_entry(table))
    isa = rows[0].get("isa") if rows else None
    name = f"{break_even.NAME}{'_' + isa if isa and isa != 'avx512' else ''}{'_quick' if args.quick else ''}"
    json_path, md_path = write_results(RESULTS_DIR, name, rows, break_even.COLUMNS, break_even.TITLE, machine)
    md_path.write_text(md_path.read_text() + "\n## Break-even per kernel, dtype and rows per call\n\n"
                       "measured: the lowest sparsity from which the sparse module wins or ties (within "
                       f"{1 - break_even.PARITY:.0%}) on every shape in every repeat at every sparsity above; "
                       "table: what \"auto\" uses now.\n\n"
                       + markdown_table(table, break_even.TABLE_COLUMNS) + "\n\nAs the table of prunekit/nn/auto.py:"
                       "\n\n```python\n" + break_even.table_entry(table) + "\n```\n")
    print("wrote", json_path, md_path)
