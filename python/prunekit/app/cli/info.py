"""``prunekit info``: what this build of prunekit contains, the CPU, torch threads and CUDA
devices, as JSON."""

from __future__ import annotations

import argparse
import json

import torch

import prunekit

from ..benchmarks.common import cpu_name


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Adds the ``info`` command to ``commands`` (the subparsers of ``prunekit``)."""
    parser = commands.add_parser(
        "info", parents=[common], help="build info, CPU ISA, threads and CUDA devices (JSON)",
        description="Print what this build contains, the CPU ISA in use, torch threads and CUDA devices, as JSON.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = prunekit.build_info()
    info["cpu"] = cpu_name()
    info["threads"] = torch.get_num_threads()
    info["cuda_available"] = torch.cuda.is_available()
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(json.dumps(info, indent=2))
    return 0

