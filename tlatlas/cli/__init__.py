"""The ``tlatlas`` command. The only place (with notebooks and reports) that prints.

Each module of this package registers its subcommands with ``register(sub)``; a new
command group is one module and one line in ``COMMAND_MODULES``.

Every invalid argument or input ends in one ``tlatlas: error: ...`` line on stderr and
exit status 2: argparse rejects what it can (:mod:`tlatlas.cli.common`), and ``main``
turns the library's own errors (:class:`~tlatlas.errors.TlatlasError`) and the
file-system errors of user paths into that line. Anything else is a bug and keeps its
traceback.
"""

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Sequence

from tlatlas.cli.common import HelpFormatter, Parser
from tlatlas.errors import TlatlasError

COMMAND_MODULES = (
    "tlatlas.cli.core",
    "tlatlas.cli.atlas",
    "tlatlas.cli.lora",
    "tlatlas.cli.report",
    "tlatlas.cli.steer",
)

# raised for paths the user named (--out below a file, a missing input, a directory
# where a file is wanted); the message names the path
USER_PATH_ERRORS = (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                    PermissionError)


DESCRIPTION = ("Where does this model compute? Causal atlases (layer ablations by task "
               "family), steering sweeps, atlas-guided LoRA and HTML reports for small "
               "language models.")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tlatlas", description=DESCRIPTION,
                    formatter_class=HelpFormatter,
                    epilog="`tlatlas COMMAND --help` describes each command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    return parser


def _path_message(err: OSError) -> str:
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    what = (err.strerror or str(err)).lower()
    return f"{where}: {what}" if where else what


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 for an invalid argument or input)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tlatlas never downloads
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or argparse's one-line error (common.Parser)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    args.command_line = "tlatlas " + shlex.join(argv)  # recorded in every result
    try:
        return int(args.func(args))
    except TlatlasError as err:
        message = str(err)
    except USER_PATH_ERRORS as err:
        message = _path_message(err)
    except KeyboardInterrupt:
        print("tlatlas: interrupted", file=sys.stderr)
        return 130
    # one line: a multi-line library message is folded onto it
    print("tlatlas: error: " + " ".join(message.split()), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
