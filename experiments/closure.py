"""Which results an edit recomputes: the blocks whose code version hashes a file.

    python -m experiments.closure tlatlas/atlas/verify.py   # blocks an edit of it recomputes
    python -m experiments.closure --block steer-quant       # the files steer-quant's version hashes

A result is reused only while its block's code version (``experiments/provenance.py``: the
static import closure of the block's module and :data:`experiments.records.CONTEXT_MODULES`)
is unchanged, so an edit to a file recomputes every result of every block whose closure
holds it. Ask before editing a library module that every atlas imports.
"""

import argparse
import sys
from pathlib import Path

from experiments.blocks import all_blocks
from experiments.provenance import closure
from experiments.records import CONTEXT_MODULES

ROOT = Path(__file__).resolve().parents[1]


def block_files(block_id: str) -> tuple[str, ...]:
    """Repository-relative source files the code version of ``block_id`` hashes."""
    blocks = all_blocks()
    if block_id not in blocks:
        raise SystemExit(f"unknown block {block_id!r}; known: {', '.join(blocks)}")
    files = closure((blocks[block_id].run.__module__, *CONTEXT_MODULES))
    return tuple(str(p.resolve().relative_to(ROOT)) for p in files)


def blocks_hashing(path: str) -> tuple[str, ...]:
    """Blocks whose code version changes when the file at ``path`` changes."""
    full = Path(path).resolve()
    if not full.is_file():  # relative to the repository root, wherever we run from
        full = (ROOT / path).resolve()
    if not full.is_file():
        raise SystemExit(f"no such file: {path}")
    rel = str(full.relative_to(ROOT))
    return tuple(b for b in all_blocks() if rel in block_files(b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="source files (relative to the repository root)")
    ap.add_argument("--block", help="list the files this block's code version hashes")
    args = ap.parse_args(argv)
    if args.block:
        print("\n".join(block_files(args.block)))
    for f in args.files:
        hit = blocks_hashing(f)
        print(f"{f}: {', '.join(hit) if hit else 'no block (no result is recomputed)'}")
    if not args.block and not args.files:
        ap.error("give files or --block")
    return 0


if __name__ == "__main__":
    sys.exit(main())
