"""Where prunekit's sparse modules on CUDA break even with cuBLAS on this GPU, the data behind "auto" on
CUDA (prunekit.nn.BREAK_EVEN_SPARSITY_CUDA, one table per GPU architecture, empty until measured):
SparseLinear / SparseConv2d vs nn.Linear / nn.Conv2d across sparsity, rows per call and dtype, GPU
time from CUDA graphs with weights read from HBM. The logic lives in
prunekit.app.benchmarks.break_even_cuda. Prints the table's entry for this GPU as Python.

    python bench/bench_break_even_cuda.py [--quick] [--repeats N]
    # writes bench/results/break_even_cuda_<arch>[_quick].{json,md}
    python bench/bench_break_even_cuda.py --from-json results/break_even_cuda_sm90.json   # the table again, no timing
"""

import argparse
import json

from _common import RESULTS_DIR

from prunekit.app.benchmarks import break_even_cuda
from prunekit.app.benchmarks.common import machine_info, write_results

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=break_even_cuda.QUICK)
    parser.add_argument("--repeats", type=int, default=2, help="measure everything this many times; the table "
                        "keeps each case's worst (default 2)")
    parser.add_argument("--from-json", metavar="PATH", help="rows recorded by an earlier run: the table again")
    args = parser.parse_args()
    if args.from_json:
        recorded = json.loads(open(args.from_json).read())
        rows, machine = recorded["rows"], recorded["machine"]
    else:
        ok, why = break_even_cuda.available()
        if not ok:
            raise SystemExit(f"bench_break_even_cuda: {why}")
        rows = break_even_cuda.run(args.quick, repeats=args.repeats,
                                   on_row=lambda row: print(break_even_cuda.describe(row), flush=True))
        machine = machine_info()
    arch = rows[0]["arch"] if rows else "unknown"
    source = break_even_cuda.table_source(arch, break_even_cuda.cuda_table(rows))
    print("BREAK_EVEN_SPARSITY_CUDA entry for this GPU (prunekit/nn/auto.py):\n    " + source)
    name = f"{break_even_cuda.NAME}_{arch}{'_quick' if args.quick else ''}"
    json_path, md_path = write_results(RESULTS_DIR, name, rows, break_even_cuda.COLUMNS, break_even_cuda.TITLE,
                                       machine)
    md_path.write_text(md_path.read_text() + "\n## The table's entry for this GPU\n\n```python\n" + source + "\n```\n")
    print("wrote", json_path, md_path)
