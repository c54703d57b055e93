"""Where the CPU sparse kernels break even with dense torch, the data behind "auto"
(prunekit.nn.BREAK_EVEN_SPARSITY): SparseLinear / SparseConv2d vs nn.Linear / nn.Conv2d across
sparsity, rows per call and dtype, on 1 thread in CPU time with the weights cold in L2. The
logic lives in prunekit.benchmarks.break_even.

    python bench/bench_break_even.py [--quick]   # writes bench/results/break_even_cpu[_quick].{json,md}
"""

import argparse

from _common import RESULTS_DIR

from prunekit.benchmarks import break_even
from prunekit.benchmarks.common import markdown_table, write_results

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=break_even.QUICK)
    args = parser.parse_args()
    rows = break_even.run(args.quick, on_row=lambda row: print(break_even.describe(row), flush=True))
    table = break_even.break_even_table(rows)
    print(markdown_table(table, break_even.TABLE_COLUMNS))
    name = f"{break_even.NAME}{'_quick' if args.quick else ''}"
    json_path, md_path = write_results(RESULTS_DIR, name, rows, break_even.COLUMNS, break_even.TITLE)
    md_path.write_text(md_path.read_text() + "\n## Break-even per kernel, dtype and rows per call\n\n"
                       "measured: the lowest sparsity from which the sparse module wins on every shape at every "
                       "sparsity above; table: what \"auto\" uses now.\n\n"
                       + markdown_table(table, break_even.TABLE_COLUMNS) + "\n")
    print("wrote", json_path, md_path)
