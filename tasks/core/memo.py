"""Per-record memos: what a step made of one input record, remembered across runs, so that a
night with 1% new images does the per-record work of that 1% only (with or without Prefect's
cache, which can only skip a whole step whose inputs did not change).

A memo belongs to one step under one setting (its config, the code version, the libraries that
shape its answer: the caller's `key`). It maps a digest of the input's JSON line to the lines
the step wrote for it, plus a short JSON of extras (counters, paths to check). It lives in the
content store as one append-only file: a run loads it once and appends what it learned in one
write, so two runs at once can only add whole entries (a torn last line is skipped on load).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ENTRY_SEPARATOR = "\t"  # JSON lines never hold a raw tab (json escapes control characters)


def line_digest(line: str) -> str:
    return hashlib.blake2b(line.rstrip("\n").encode(), digest_size=16).hexdigest()


class LineMemo:
    """`memo.get(line)` -> (output lines, extras) or None; `memo.put(line, outputs, extras)`;
    `memo.save()` appends the new entries."""

    def __init__(self, store_root: str | Path, step: str, key: str) -> None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.path = Path(store_root) / "memos" / step / f"{digest}.tsv"
        self._known: dict[str, list[str]] = {}
        self._new: list[str] = []
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as handle:
                for entry in handle:
                    if entry.endswith("\n"):  # a torn last entry is not one
                        fields = entry[:-1].split(ENTRY_SEPARATOR)
                        self._known[fields[0]] = fields[1:]

    def get(self, line: str) -> tuple[list[str], dict] | None:
        fields = self._known.get(line_digest(line))
        if fields is None:
            return None
        try:
            return fields[1:], json.loads(fields[0])
        except (ValueError, IndexError):  # a damaged entry: do the work again
            return None

    def put(self, line: str, outputs: list[str], extras: dict | None = None) -> None:
        fields = [line_digest(line), json.dumps(extras or {}, separators=(",", ":")),
                  *(out.rstrip("\n") for out in outputs)]
        if any(ENTRY_SEPARATOR in field or "\n" in field for field in fields):
            return  # not a one-line JSON record: not remembered, only done again next time
        self._known[fields[0]] = fields[1:]
        self._new.append(ENTRY_SEPARATOR.join(fields) + "\n")

    def save(self) -> None:
        """Append this run's new entries (one write: concurrent runs interleave whole blocks)."""
        if not self._new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(self._new).encode("utf-8")
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while data:
                data = data[os.write(descriptor, data):]
        finally:
            os.close(descriptor)
        self._new = []

    def __len__(self) -> int:
        return len(self._known)


def remembered_map(lines: Iterable[str], memo: LineMemo, make: Callable[[str], list[str]]) -> Iterator[str]:
    """Each input line's output lines: remembered, or made by `make` and remembered."""
    for line in lines:
        hit = memo.get(line)
        if hit is None:
            outputs = make(line)
            memo.put(line, outputs)
        else:
            outputs = hit[0]
        yield from outputs
