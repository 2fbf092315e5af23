"""Which code made a result: hashes of module sources, for cache keys and memo names.

`code_version()` covers the whole `tasks` package (Prefect's task keys: any edit re-runs a
step, whose per-record memos then answer what did not change). `closure_version(starts)` covers
only the modules that make a given result: `starts` (stage folders or module files) and what
they import inside `tasks`, found by reading their import statements (those inside functions
too), so that an edit elsewhere keeps training checkpoints and content-store memos. Free of
Prefect: the image workers import it through the content store.
"""

from __future__ import annotations

import hashlib
import io
import tokenize
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

TASKS_ROOT = Path(__file__).resolve().parents[1]

# Config values enter every key as the config sections themselves (canonical JSON, defaults
# included), so the modules defining them are left out of closures: a new setting elsewhere in
# the config (a nightly option) must keep checkpoints and memos.
CONFIG_MODULES = ("core/config.py", "core/model_config.py", "core/operations_config.py")


def _hash_files(paths: Iterable[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def code_version(root: Path = TASKS_ROOT) -> str:
    """A hash of every module under `tasks/`, recursively (an edit in any stage counts)."""
    return _hash_files((p for p in root.rglob("*.py") if "__pycache__" not in p.parts), root)


def module_file(name: str, root: Path) -> Path | None:
    """The file of module `name` (`tasks.a.b`: a/b.py, or a/b/__init__.py) in the package at
    `root`; None for a module outside it or a name that is not a module (a class, a function)."""
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in ([base.with_suffix(".py")] if len(parts) > 1 else []) + [base / "__init__.py"]:
        if candidate.is_file():
            return candidate
    return None


def import_statements(source: bytes) -> list[tuple[int, str, list[str]]]:
    """(level, module, imported names) of every import statement in `source`, wherever it sits:
    `import a.b` -> (0, "a.b", []), `from ..c import d` -> (2, "c", ["d"]). Read from its tokens,
    not its syntax tree: CPython 3.11's `ast.parse` is not thread-safe (two threads building
    trees at once can fail with "AST constructor recursion depth mismatch", gh-106905), and
    steps compute these on Prefect's worker threads."""
    statements: list[tuple[int, str, list[str]]] = []
    words: list[str] = []  # the current statement's NAME and OP tokens
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    for token in tokenize.tokenize(io.BytesIO(source).readline):
        if token.type in skipped:
            continue
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or token.string in (";", ":"):
            if words[:1] == ["import"] or (words[:1] == ["from"] and "import" in words):
                statements += _import_statement(words)
            words = []
            continue
        words.append(token.string)
    return statements


def _import_statement(words: list[str]) -> list[tuple[int, str, list[str]]]:
    def dotted(pieces: list[str]) -> list[str]:
        """`a . b as c , d` -> ["a.b", "d"] (aliases and parentheses dropped)."""
        names, current, skip = [], "", False
        for piece in [*pieces, ","]:
            if piece == ",":
                if current:
                    names.append(current)
                current, skip = "", False
            elif piece == "as":
                skip = True
            elif not skip and piece not in "()":
                current += piece
        return names

    if words[0] == "import":
        return [(0, name, []) for name in dotted(words[1:])]
    split = words.index("import")
    module = "".join(words[1:split])
    level = len(module) - len(module.lstrip("."))
    return [(level, module.lstrip("."), dotted(words[split + 1:]))]


def imported_files(path: Path, root: Path) -> set[Path]:
    """The files of the package's modules that `path` imports, wherever the statement sits, and
    of the packages above them (Python runs their `__init__` first)."""
    parts = path.relative_to(root).with_suffix("").parts
    package = [root.name, *parts[:-1]]
    names: list[str] = []
    for level, module, imported in import_statements(path.read_bytes()):
        if not imported:
            names.append(module)
            continue
        base = module
        if level:  # relative: from the module's own package, up `level - 1`
            base = ".".join(filter(None, [*package[:len(package) - level + 1], base]))
        names += [base] + [f"{base}.{name}" for name in imported]
    found = set()
    for name in names:
        pieces = name.split(".")
        found.update(filter(None, (module_file(".".join(pieces[:n]), root)
                                   for n in range(1, len(pieces) + 1))))
    return found


def module_closure(starts: Iterable[str], leave_out: Iterable[str] = CONFIG_MODULES,
                   root: Path | None = None) -> list[Path]:
    """The module files under `root` (default: the `tasks` package) that `starts` (folders or
    files, relative to root) are made of, with what they import transitively, less `leave_out`
    (relative paths: neither hashed nor followed)."""
    root = root or TASKS_ROOT
    skipped = {root / name for name in leave_out}
    pending: list[Path] = []
    for start in starts:
        where = root / start
        pending += sorted(p for p in where.rglob("*.py") if "__pycache__" not in p.parts) \
            if where.is_dir() else [where]
        pending += [folder / "__init__.py" for folder in where.parents
                    if folder.is_relative_to(root) and (folder / "__init__.py").is_file()]
    found: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in found or path in skipped:
            continue
        found.add(path)
        pending += imported_files(path, root) - found
    return sorted(found)


def closure_version(starts: tuple[str, ...], leave_out: tuple[str, ...] = CONFIG_MODULES,
                    root: Path | None = None) -> str:
    """A hash of `module_closure(starts, leave_out, root)`: it changes with an edit in the code
    that makes a result, and only there (kept for the process, as `code_version`)."""
    return _closure_version(tuple(starts), tuple(leave_out), root or TASKS_ROOT)


@lru_cache(maxsize=64)
def _closure_version(starts: tuple[str, ...], leave_out: tuple[str, ...], root: Path) -> str:
    return _hash_files(module_closure(starts, leave_out, root), root)
