"""Checks that the imported prunekit build registers a CUDA kernel for every op whose CUDA glue
(csrc/cuda/*.cu) registers one. The expected ops are read from the sources: every prunekit op
named inside a ``TORCH_LIBRARY_IMPL(prunekit, CUDA, m)`` block. Needs no GPU (importing a CUDA
torch works without one). Prints one line per prunekit op: its CUDA kernel, or the composite
(device-generic) kernel CUDA falls back to, or none. Exit 1 when an expected op lacks its kernel.

Usage: python scripts/check_cuda_ops.py [--sources csrc/cuda]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

BLOCK = re.compile(r"TORCH_LIBRARY_IMPL\s*\(\s*prunekit\s*,\s*CUDA\s*,\s*\w+\s*\)\s*\{")
STRING = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"')


def block_bodies(text: str) -> list[str]:
    """The bodies of the TORCH_LIBRARY_IMPL(prunekit, CUDA, ...) blocks in a source file."""
    bodies = []
    for match in BLOCK.finditer(text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                bodies.append(text[start:index])
                break
    return bodies


def expected_cuda_ops(sources: pathlib.Path, op_names: set[str]) -> dict[str, str]:
    """{op: source file} for every prunekit op named in a CUDA impl block of the glue sources."""
    expected = {}
    for path in sorted(sources.glob("*.cu")):
        for body in block_bodies(path.read_text()):
            for name in STRING.findall(body):
                if name in op_names:
                    expected[name] = path.name
    return expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=str(pathlib.Path(__file__).resolve().parent.parent / "csrc" / "cuda"))
    args = parser.parse_args()

    import torch

    import prunekit

    info = prunekit.build_info()
    print(f"prunekit {info['version']} built against torch {info['torch_version']} (running "
          f"{torch.__version__}, CUDA {torch.version.cuda}); cuda_built={info['cuda_built']} "
          f"cuda_archs={info.get('cuda_archs')}")
    if not info["cuda_built"]:
        print("FAIL: this build has no CUDA code")
        return 1
    ops = sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                 if name.startswith("prunekit::"))
    expected = expected_cuda_ops(pathlib.Path(args.sources), set(ops))
    if not expected:
        print(f"FAIL: no CUDA impl blocks found in {args.sources}")
        return 1
    missing = []
    for op in ops:
        qualified = f"prunekit::{op}"
        if torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CUDA"):
            state = "CUDA kernel"
        elif torch._C._dispatch_has_computed_kernel_for_dispatch_key(qualified, "CUDA"):
            state = "composite (device-generic)"
        else:
            state = "none"
        if op in expected and state != "CUDA kernel":
            missing.append(op)
            state += f"  <-- MISSING: {expected[op]} registers a CUDA kernel"
        print(f"  {op:32s} {state}")
    print(f"{len(expected)} ops with CUDA kernels in the sources, {len(expected) - len(missing)} registered for CUDA")
    if missing:
        print(f"FAIL: not registered for CUDA: {', '.join(missing)}")
        return 1
    print("OK: every op with a CUDA kernel in the sources is registered for CUDA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
