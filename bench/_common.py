"""Benchmark plumbing for the bench/ scripts: the logic lives in prunekit.app.benchmarks.common (so
that ``prunekit bench`` works from an installed wheel); results go to bench/results."""

from pathlib import Path

from prunekit.app.benchmarks import common
from prunekit.app.benchmarks.common import machine_info, time_ms  # noqa: F401  (re-exported for the scripts)

RESULTS_DIR = Path(__file__).parent / "results"


def write_results(name: str, rows: list[dict], columns: list[str], title: str) -> tuple[Path, Path]:
    """Writes results/<name>.json (machine info + rows) and results/<name>.md (a table)."""
    return common.write_results(RESULTS_DIR, name, rows, columns, title)


def main(family: str, doc: str, extra_arguments=None, variant=None) -> None:
    """The command line shared by bench_<family>.py: --quick, --threads, then run, print a line per
    row, write results/<NAME>[<variant>][_quick].{json,md}. ``extra_arguments(parser)`` adds options
    whose values are passed to the family's run() as keyword arguments; ``variant(args)`` names
    results that those options make differ from the default ones ("" for the default)."""
    import argparse

    import torch

    from prunekit.app import benchmarks

    module = benchmarks.family(family)
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=module.QUICK)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    extra = extra_arguments(parser) if extra_arguments else []
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = module.run(args.quick, on_row=lambda row: print(module.describe(row), flush=True),
                      **{name: getattr(args, name) for name in extra})
    name = f"{module.NAME}{variant(args) if variant else ''}{'_quick' if args.quick else ''}"
    paths = write_results(name, rows, module.COLUMNS, module.TITLE)
    print("wrote", *paths)


def sampled_like(model, tokenizer, calib: list[dict]) -> list[dict]:
    """As many sequences as ``calib`` holds, of its length and batching, that ``model`` samples
    itself from its BOS token (prunekit.recovery.teacher_samples, seed 0): self-calibration."""
    from prunekit.recovery import teacher_samples

    return teacher_samples(model, tokenizer, sequences=sum(len(b["input_ids"]) for b in calib),
                           seqlen=calib[0]["input_ids"].shape[1], batch_size=len(calib[0]["input_ids"]), progress=False)
