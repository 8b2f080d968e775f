"""The ``tlatlas`` command. The only place (with notebooks and reports) that prints.

Each module of this package registers its subcommands with ``register(sub)``; a new
command group is one module and one line in ``COMMAND_MODULES``.
"""

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Sequence

from tlatlas.errors import TlatlasError

COMMAND_MODULES = (
    "tlatlas.cli.core",
    "tlatlas.cli.atlas",
    "tlatlas.cli.lora",
    "tlatlas.cli.report",
    "tlatlas.cli.steer",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlatlas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tlatlas never downloads
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "tlatlas " + shlex.join(argv)  # recorded in every result
    try:
        return int(args.func(args))
    except TlatlasError as err:
        print(f"tlatlas: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
