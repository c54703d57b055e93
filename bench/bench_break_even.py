"""Where the CPU sparse kernels break even with dense torch, the data behind "auto"
(prunekit.nn.BREAK_EVEN_SPARSITY): SparseLinear / SparseConv2d vs nn.Linear / nn.Conv2d across
sparsity, rows per call and dtype, on 1 thread in CPU time with the weights cold in L2. The
logic lives in prunekit.app.benchmarks.break_even.

    python bench/bench_break_even.py [--quick] [--repeats N]   # writes bench/results/break_even_cpu[_quick].{json,md}
    python bench/bench_break_even.py --from-json results/break_even_cpu.json   # the table again, no timing
"""

import argparse
import json

from _common import RESULTS_DIR

from prunekit.app.benchmarks import break_even
from prunekit.app.benchmarks.common import machine_info, markdown_table, write_results

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=break_even.QUICK)
    parser.add_argument("--repeats", type=int, default=2, help="measure everything this many times; the table "
                        "keeps each case's worst (default 2)")
    parser.add_argument("--from-json", metavar="PATH", help="rows recorded by an earlier run: derive the table "
                        "again (e.g. after the tables in prunekit.nn changed) and rewrite its files")
    args = parser.parse_args()
    if args.from_json:
        recorded = json.loads(open(args.from_json).read())
        rows, machine = recorded["rows"], recorded["machine"]
    else:
        rows = break_even.run(args.quick, repeats=args.repeats,
                              on_row=lambda row: print(break_even.describe(row), flush=True))
        machine = {**machine_info(), "threads": 1}  # timed on 1 thread
    table = break_even.break_even_table(rows)
    print(markdown_table(table, break_even.TABLE_COLUMNS))
    name = f"{break_even.NAME}{'_quick' if args.quick else ''}"
    json_path, md_path = write_results(RESULTS_DIR, name, rows, break_even.COLUMNS, break_even.TITLE, machine)
    md_path.write_text(md_path.read_text() + "\n## Break-even per kernel, dtype and rows per call\n\n"
                       "measured: the lowest sparsity from which the sparse module wins or ties (within "
                       f"{1 - break_even.PARITY:.0%}) on every shape in every repeat at every sparsity above; "
                       "table: what \"auto\" uses now.\n\n"
                       + markdown_table(table, break_even.TABLE_COLUMNS) + "\n")
    print("wrote", json_path, md_path)
