"""The ``prunekit`` command (also ``python -m prunekit``): prune, eval, bench, info and demo, one
module each; :mod:`.common` holds what they share, :mod:`.data` the text they calibrate and
evaluate on.

Bad input (a missing model, a malformed sparsity, an empty calibration file, an unwritable output
directory, ...) ends with a one-line ``prunekit <command>: error: ...`` on stderr and exit code 2;
``--debug`` shows the traceback instead. Progress bars go to stderr and hide when stderr is not a
terminal or with ``--quiet``; log messages go to stderr; results go to stdout.
"""

from __future__ import annotations

import argparse
import sys

from prunekit._names import one_line

from . import bench, demo, info, prune
from . import eval as evaluate
from . import prune_layers, recover
from . import slice as slice_command
from .common import EXIT_INTERNAL, EXIT_USAGE, Parser, logging_configured

__all__ = ["build_parser", "main"]

# In the order `prunekit --help` lists them.
COMMANDS = (info, demo, prune, evaluate, bench)
COMMANDS += (prune_layers, recover)
COMMANDS += (slice_command,)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars, only warnings and errors")
    common.add_argument("--debug", action="store_true", help="debug logging; show tracebacks of errors")
    common.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log level of messages on stderr (default: info)")

    parser = Parser(prog="prunekit", description="Prune PyTorch models and run the pruned models faster.",
                    epilog="Run 'prunekit COMMAND --help' for the options of a command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with logging_configured(args):
            return args.run(args)
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, ImportError) as error:
        if args.debug:
            raise
        print(f"prunekit {args.command}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # a bug: say so in one line, the traceback with --debug
        if args.debug:
            raise
        print(f"prunekit {args.command}: internal error: {type(error).__name__}: {one_line(error)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
