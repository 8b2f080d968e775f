"""Which source files a block's numbers depend on: the import closure of its module.

A result is reusable only while the code that computed it is unchanged. Hashing every
source file of the project would invalidate every result at any edit (a typo in the CLI
would recompute hours of atlases); hashing what a block actually imports keeps the check
honest and lets unrelated work land. The closure is static: every ``import`` and
``from ... import`` anywhere in a module (function-level imports included: the library
imports heavy parts lazily), followed transitively through ``tlatlas``, ``bridges`` and
``experiments``, with each module's parent packages and what *they* import at module
level (importing a module runs its packages' ``__init__``, not their functions). Imports
under ``if TYPE_CHECKING:`` never run and are not followed. A module imported by a *name
in a string* is not followed either: the one place the library does so is
:mod:`tlatlas.atlas.methods` (the estimating atlas methods), which records what it loads,
and the runner fails a block that loaded a module outside its closure
(:func:`outside_closure`).
"""

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PACKAGES = ("tlatlas", "bridges", "experiments")
"""Packages whose source is followed and hashed (third-party code is pinned by version)."""


@lru_cache(maxsize=None)
def module_file(name: str) -> Path | None:
    """The source file of a module of :data:`PACKAGES`, or None (not ours, not found)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "namespace") or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@lru_cache(maxsize=None)
def direct_imports(name: str, top_level: bool = False) -> frozenset[str]:
    """Modules of :data:`PACKAGES` that module ``name`` imports anywhere in its source
    (with ``top_level``: only in statements that run when it is imported)."""
    path = module_file(name)
    if path is None:
        return frozenset()
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = _module_level(tree.body) if top_level else _walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # submodules imported by name
    return frozenset(m for m in out if module_file(m) is not None)


def _type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): a block that never runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or
            (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk(node: ast.AST):
    """Every node, as :func:`ast.walk`, except the bodies of ``if TYPE_CHECKING:``."""
    yield node
    for child in ast.iter_child_nodes(node):
        if _type_checking(child):
            for inner in child.orelse:
                yield from _walk(inner)
        else:
            yield from _walk(child)


def _module_level(body: list[ast.stmt]):
    """Statements that run at import: the body, into if/try blocks, not into defs."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if _type_checking(node):
            yield from _module_level(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _module_level([n for n in inner if isinstance(n, ast.stmt)] +
                                         [s for h in inner if isinstance(h, ast.excepthandler)
                                          for s in h.body])


def closure(names: tuple[str, ...]) -> tuple[Path, ...]:
    """Source files of ``names`` and of everything they import, transitively (sorted)."""
    seen: set[tuple[str, bool]] = set()
    todo = [(n, n != name) for name in names for n in (*_parents(name), name)]
    while todo:
        name, as_parent = todo.pop()
        if (name, as_parent) in seen or module_file(name) is None:
            continue
        seen.add((name, as_parent))
        for dep in direct_imports(name, top_level=as_parent):
            todo.extend((p, True) for p in _parents(dep))
            todo.append((dep, False))
    return tuple(sorted({module_file(n) for n, _ in seen}, key=str))


def source_hash(names: tuple[str, ...]) -> str:
    """sha256 (12 hex digits) over the closure's files, each with its package-relative path."""
    digest = hashlib.sha256()
    for path in closure(names):
        parts = path.parts
        rel = "/".join(parts[max(i for i, p in enumerate(parts) if p in PACKAGES):])
        digest.update(rel.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def outside_closure(names: tuple[str, ...], modules: frozenset[str]) -> tuple[str, ...]:
    """Those of ``modules`` (loaded at run time) whose source is not in the closure of
    ``names``: code a result depended on that its code version does not hash."""
    files = set(closure(names))
    return tuple(sorted(m for m in modules if module_file(m) not in files))
