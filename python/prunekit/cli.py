"""The ``prunekit`` command (also ``python -m prunekit``).

``info`` prints what this build contains. ``demo`` runs the main job on its embedded default;
until the pruning pipeline lands it checks the build end to end: it prunes a random weight to 2:4
with the N:M mask, compresses it, decompresses it and verifies the round trip is exact.
"""

import argparse
import json
import sys
import time

EXIT_USAGE = 2


def _info(_args: argparse.Namespace) -> int:
    import torch

    import prunekit

    info = prunekit.build_info()
    info["threads"] = torch.get_num_threads()
    info["cuda_devices"] = [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    print(json.dumps(info, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    import prunekit
    from prunekit import ops

    _info(args)
    generator = torch.Generator().manual_seed(args.seed)
    print("\n2:4 round trip (nm_mask -> compress_24 -> decompress_24):")
    print(f"{'dtype':>10} {'shape':>12} {'kept':>6} {'bytes dense':>12} {'bytes 2:4':>10} {'exact':>6} {'ms':>8}")
    failures = 0
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.int8):
        weight = torch.randn(args.rows, args.cols, generator=generator) * 8
        weight = weight.to(dtype)
        start = time.perf_counter()
        pruned = weight * ops.nm_mask(weight.abs().float(), 2, 4)
        values, meta = ops.compress_24(pruned)
        restored = ops.decompress_24(values, meta)
        elapsed_ms = 1e3 * (time.perf_counter() - start)
        exact = bool(torch.equal(restored, pruned))
        failures += not exact
        kept = (pruned != 0).float().mean().item()
        dense_bytes = weight.numel() * weight.element_size()
        packed_bytes = values.numel() * values.element_size() + meta.numel() * meta.element_size()
        print(f"{str(dtype).removeprefix('torch.'):>10} {args.rows:>5}x{args.cols:<6} {kept:>6.3f} "
              f"{dense_bytes:>12} {packed_bytes:>10} {str(exact):>6} {elapsed_ms:>8.2f}")
    print(f"\nprunekit {prunekit.__version__}: {'all round trips exact' if not failures else f'{failures} round trips FAILED'}")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="print build info, CPU ISA, threads and CUDA devices")
    info.set_defaults(run=_info)
    demo = commands.add_parser("demo", help="run the main job on the embedded default")
    demo.add_argument("--rows", type=int, default=4096, help="rows of the demo weight (multiple of 32)")
    demo.add_argument("--cols", type=int, default=4096, help="columns of the demo weight (multiple of 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args)
    except (ValueError, RuntimeError) as error:
        print(f"prunekit {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
