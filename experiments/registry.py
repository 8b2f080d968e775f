"""The registry ``registry.jsonl``: one line per finished result, appended under a file lock.

Each line names a result file and its sha256, so a line is written once per result
version: appending a line that is already there is a no-op (a rerun after a crash between
writing a result and its line adds the missing line, never a duplicate). Writes are a single
``write`` of a whole line, flushed and fsynced under the lock. A torn last line (a crash
mid-write, or a disk that filled up) is detected: appending refuses until it is repaired,
and ``python -m experiments.registry check`` reports it; ``repair`` truncates it, on request
only, after copying the damaged file aside.

    python -m experiments.registry check [--root DIR]
    python -m experiments.registry repair [--root DIR]

``--root`` is the experiments root (default: the repository's ``experiments/`` from a source
checkout, wherever the command runs; see :mod:`experiments.paths`).
"""

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from experiments.paths import add_root_argument, root_from
from tlatlas.errors import TlatlasError

REGISTRY_NAME = "registry.jsonl"
LINE_KIND = "tlatlas.registry_line"


class TornRegistryError(TlatlasError):
    """The registry's last line is incomplete; repair it before appending."""


@dataclass(frozen=True, kw_only=True)
class RegistryCheck:
    """What ``check`` found."""

    path: str
    """The registry file."""
    n_lines: int
    """Complete, valid lines."""
    torn_last_line: bool
    """The file does not end with a complete JSON line."""
    bad_lines: tuple[int, ...]
    """1-based numbers of lines (other than a torn last one) that are not valid JSON."""
    duplicates: int
    """Lines that repeat an earlier (path, sha256)."""

    @property
    def ok(self) -> bool:
        return not self.torn_last_line and not self.bad_lines and not self.duplicates


def registry_path(root: Path) -> Path:
    return Path(root) / REGISTRY_NAME


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=120)


def _scan(data: bytes) -> tuple[list[dict], list[int], bool]:
    """Parsed lines, bad line numbers, and whether the tail is torn."""
    torn = bool(data) and not data.endswith(b"\n")
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines, bad = [], []
    for i, chunk in enumerate(raw, 1):
        try:
            lines.append(json.loads(chunk))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if torn and i == len(raw):
                continue
            bad.append(i)
    if torn and raw:  # a last line without newline that happens to parse is still torn
        try:
            json.loads(raw[-1])
            lines.pop()
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return lines, bad, torn


def read_lines(root: Path) -> list[dict]:
    """The registry's complete lines (a torn tail is left out: ``check`` reports it)."""
    path = registry_path(root)
    return _scan(path.read_bytes())[0] if path.exists() else []


def append_line(root: Path, line: dict) -> bool:
    """Append ``line`` unless a line with its ``path`` and ``sha256`` is there; True if written."""
    path = registry_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"kind": LINE_KIND, **line}
    text = json.dumps(line, sort_keys=True)
    if "\n" in text:
        raise ValueError("a registry line must not contain a newline")
    with _lock(path):
        data = path.read_bytes() if path.exists() else b""
        lines, _, torn = _scan(data)
        if torn:
            raise TornRegistryError(
                f"{path} ends with a torn line (a crash mid-write?); run "
                f"`python -m experiments.registry check --root {root}` and `repair` to fix it")
        if any(x.get("path") == line.get("path") and x.get("sha256") == line.get("sha256")
               for x in lines):
            return False
        with open(path, "ab") as fh:
            fh.write(text.encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    return True


def check(root: Path) -> RegistryCheck:
    path = registry_path(root)
    data = path.read_bytes() if path.exists() else b""
    lines, bad, torn = _scan(data)
    seen, dups = set(), 0
    for x in lines:
        k = (x.get("path"), x.get("sha256"))
        dups += k in seen
        seen.add(k)
    return RegistryCheck(path=str(path), n_lines=len(lines), torn_last_line=torn,
                         bad_lines=tuple(bad), duplicates=dups)


def repair(root: Path) -> Path | None:
    """Drop a torn last line (the damaged file is kept as ``registry.jsonl.torn``)."""
    path = registry_path(root)
    with _lock(path):
        data = path.read_bytes() if path.exists() else b""
        if not data or data.endswith(b"\n"):
            return None
        backup = path.with_name(path.name + ".torn")
        shutil.copyfile(path, backup)
        keep = data[: data.rfind(b"\n") + 1]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(keep)
        os.replace(tmp, path)
        return backup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.registry",
                                     description="check or repair the experiment registry")
    parser.add_argument("action", choices=["check", "repair"])
    add_root_argument(parser)
    args = parser.parse_args(argv)
    root = root_from(args)
    if args.action == "repair":
        backup = repair(root)
        print(f"repaired {registry_path(root)}; damaged copy kept at {backup}" if backup
              else f"{registry_path(root)} has no torn line; nothing to do")
        return 0
    c = check(root)
    print(f"{c.path}: {c.n_lines} complete lines")
    if c.torn_last_line:
        print("  TORN last line: the file does not end with a complete line "
              f"(run `python -m experiments.registry repair --root {root}` to drop it)")
    if c.bad_lines:
        print(f"  invalid lines: {list(c.bad_lines)}")
    if c.duplicates:
        print(f"  duplicate lines: {c.duplicates}")
    print("  ok" if c.ok else "  NOT ok")
    return 0 if c.ok else 1


if __name__ == "__main__":
    sys.exit(main())
