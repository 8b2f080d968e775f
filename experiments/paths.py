"""The experiments root: the directory holding ``results/``, ``registry.jsonl``, ``claims.md``
and ``artifacts/``.

Every command (``python -m experiments.run``, ``experiments.claims``, ``experiments.registry``)
takes ``--root DIR`` and runs from any directory. Without it the root is this package's own
directory when it runs from a source checkout (the repository's committed ``experiments/``,
wherever the command is started), and ``./experiments`` otherwise (a non-editable install has
no results of its own).

    cd /tmp && python -m experiments.run --model smollm2-135m --blocks all --size smoke \\
        --dry-run --root /path/to/repo/experiments
"""

import argparse
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
"""This package's directory (the committed experiments root in a source checkout)."""


def in_source_tree() -> bool:
    """True when this package is the ``experiments/`` directory of a repository checkout."""
    return (PACKAGE_DIR.parent / "pyproject.toml").is_file()


def default_root() -> Path:
    """The root used when ``--root`` is not given (relative when under the current directory)."""
    if not in_source_tree():
        return Path("experiments")
    try:
        return PACKAGE_DIR.relative_to(Path.cwd().resolve())
    except ValueError:
        return PACKAGE_DIR


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--root DIR`` (default: :func:`default_root`, resolved when parsing)."""
    parser.add_argument("--root", type=Path, default=None,
                        help="experiments root holding results/, registry.jsonl, claims.md and "
                             "artifacts/ (default: the repository's experiments/ directory when "
                             "run from a source checkout, else ./experiments)")


def root_from(args: argparse.Namespace) -> Path:
    """``args.root``, or :func:`default_root` when it was not given."""
    return default_root() if args.root is None else Path(args.root)
