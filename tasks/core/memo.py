"""Per-record memos: what a step made of one input record, remembered across runs, so that a
night with 1% new images does the per-record work of that 1% only (with or without Prefect's
cache, which can only skip a whole step whose inputs did not change).

A memo belongs to one step under one setting (its config, the code version, the libraries that
shape its answer: the caller's `key`). It maps a digest of the input's JSON line to the lines
the step wrote for it, plus a short JSON of extras (counters; under "paths", the files the
outputs name, which must still be there for the entry to count). It lives in the content store
as one append-only file: a run indexes it once and appends what it learned in whole blocks, so
two runs at once can only add whole entries. A run killed mid-append leaves a torn last entry:
the next append starts on a line of its own, and every entry ends with a checksum of itself, so
a torn or glued entry is never taken for a hit (it is done again). A memo file's last write is
when a run last used it (`reached`): what no kept run reached is swept (home_collection.py).

In front of it, a step that streams records (budget, flips, targets) keeps a `ChunkMemo`: what
it wrote for a whole chunk of consecutive records, cut where the records' own hashes say, so that
a night reads its unchanged chunks back without a look-up per record, and looks records up only
in the few chunks the new ones fall into.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ENTRY_SEPARATOR = "\t"  # JSON lines never hold a raw tab (json escapes control characters)
DIGEST_CHARS = 32


def line_digest(line: str) -> str:
    return hashlib.blake2b(line.rstrip("\n").encode(), digest_size=DIGEST_CHARS // 2).hexdigest()


def entry_check(body: str) -> str:
    """The checksum that closes an entry: a torn one (or one glued to a torn one) fails it."""
    return hashlib.blake2b(body.encode(), digest_size=4).hexdigest()


def reached(path: Path) -> None:
    """A memo file a run used (a chunk read back, a per-record memo a step had open) carries the
    time of that use as its last write: home collection sweeps the memo files no kept run reached
    (home_collection.py). One utime per file and step; a file gone meanwhile is no matter."""
    try:
        os.utime(path)
    except OSError:
        pass


FLUSH_EVERY = 256  # new entries held before they are appended: memory stays flat


class LineMemo:
    """`memo.get(line)` -> (output lines, extras) or None; `memo.put(line, outputs, extras)`;
    `memo.save()` appends what is left of the new entries. Only where each entry lies in the
    file is held (~150 bytes an entry), an entry is read when asked for: a memo of every record
    of a large dataset does not grow the process. The file is indexed at the first look-up, not
    before: a step whose chunks all come from its `ChunkMemo` never reads it."""

    def __init__(self, store_root: str | Path, step: str, key: str) -> None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.path = Path(store_root) / "memos" / step / f"{digest}.tsv"
        self._where: dict[bytes, tuple[int, int]] | None = None  # digest -> (offset, length)
        self._new: dict[str, str] = {}  # digest -> entry, until appended
        self._reader: int | None = None

    def _index(self) -> dict[bytes, tuple[int, int]]:
        """Where each entry of the file lies (read once, at the first look-up)."""
        if self._where is None:
            self._where = {}
            if self.path.is_file():
                with open(self.path, "rb") as handle:
                    offset = 0
                    for raw in handle:
                        if raw.endswith(b"\n"):  # a torn last entry is not one
                            self._where[raw[:DIGEST_CHARS]] = (offset, len(raw))
                        offset += len(raw)
        return self._where

    def _entry(self, digest: str) -> str | None:
        if digest in self._new:
            return self._new[digest]
        where = self._index().get(digest.encode())
        if where is None:
            return None
        if self._reader is None:
            self._reader = os.open(self.path, os.O_RDONLY)
        return os.pread(self._reader, where[1], where[0]).decode("utf-8", errors="replace")

    def get(self, line: str) -> tuple[list[str], dict] | None:
        """The remembered outputs and extras, or None: never seen, damaged, or naming a file
        (extras["paths"]) that is gone since, say a store cleaned by hand."""
        digest = line_digest(line)
        entry = self._entry(digest)
        if entry is None:
            return None
        body, _, check = entry.rstrip("\n").rpartition(ENTRY_SEPARATOR)
        if check != entry_check(body):
            return None  # torn by a kill, glued to a torn one, or written before checksums
        fields = body.split(ENTRY_SEPARATOR)
        try:
            if fields[0] != digest:
                return None  # the file changed under us (or an entry was glued to a torn one)
            extras = {} if fields[1] == "{}" else json.loads(fields[1])  # most have none
        except (ValueError, IndexError):  # a damaged entry: do the work again
            return None
        if not all(os.path.isfile(path) for path in extras.get("paths", ())):
            return None
        return fields[2:], extras

    def put(self, line: str, outputs: list[str], extras: dict | None = None) -> None:
        fields = [line_digest(line), json.dumps(extras or {}, separators=(",", ":")),
                  *(out.rstrip("\n") for out in outputs)]
        if any(ENTRY_SEPARATOR in field or "\n" in field for field in fields):
            return  # not a one-line JSON record: not remembered, only done again next time
        body = ENTRY_SEPARATOR.join(fields)
        self._new[fields[0]] = body + ENTRY_SEPARATOR + entry_check(body) + "\n"
        if len(self._new) >= FLUSH_EVERY:
            self._append()

    def _append(self) -> None:
        """Append the new entries in one write (concurrent runs interleave whole blocks)."""
        if not self._new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(self._new.values()).encode("utf-8")
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                data = b"\n" + data  # after a torn entry: ours start on a line of their own
            while data:
                data = data[os.write(descriptor, data):]
        finally:
            os.close(descriptor)
        self._new = {}

    def save(self) -> None:
        """Append the entries not yet written, and mark the file reached (see `reached`); the
        memo is done with."""
        self._append()
        reached(self.path)
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None

    def __del__(self) -> None:
        if getattr(self, "_reader", None) is not None:
            os.close(self._reader)

    def __len__(self) -> int:
        return len(self._index()) + len(self._new)

    def __bool__(self) -> bool:
        # A memo is there even when empty: `if memo` must not read its whole file (__len__).
        return True


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


CHUNK_LINES = 64  # records per chunk, on average


def content_chunks(lines: Iterable[str], size: int = CHUNK_LINES) -> Iterator[list[str]]:
    """Consecutive lines, cut after any line whose own hash is 0 modulo `size` (or at 4 x size):
    a cut depends on its own line, so new or changed records change the chunks they fall into
    and (but for a run of 4 x size uncut lines) no other, as the shards are cut."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if zlib.crc32(line.encode()) % size == 0 or len(chunk) >= 4 * size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def chunk_check(body: str) -> str:
    """A chunk file's check of its lines (damage, not tampering: crc32 is ~5x faster than blake2b
    on a chunk's ~100 KB)."""
    return f"{zlib.crc32(body.encode()):08x}"


class ChunkMemo:
    """What a step wrote for a whole chunk of input lines (`content_chunks`), by the chunk's
    digest, in front of the step's per-record memo: a chunk that did not change since an earlier
    run gives its output lines without a look-up per record (~15 us each: 1.5-2 s a step at
    100,000 images). One file per chunk, written whole (a temporary file, then a rename), under
    `memos/<step>/<key digest>.chunks/`; its extras as in LineMemo (files under "paths" must
    still be there)."""

    def __init__(self, store_root: str | Path, step: str, key: str) -> None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.folder = Path(store_root) / "memos" / step / f"{digest}.chunks"

    def _path(self, chunk: list[str]) -> tuple[Path, str]:
        digest = hashlib.blake2b("".join(line.rstrip("\n") + "\n" for line in chunk).encode(),
                                 digest_size=DIGEST_CHARS // 2).hexdigest()
        return self.folder / digest[:2] / f"{digest}.txt", digest

    def get(self, chunk: list[str]) -> tuple[list[str], dict] | None:
        path, digest = self._path(chunk)
        try:
            head, *outputs = path.read_text(encoding="utf-8").split("\n")[:-1]
            found, extras, check = head.split(ENTRY_SEPARATOR)
            extras = json.loads(extras)
        except (OSError, ValueError):  # none, or damaged: done again
            return None
        if found != digest or check != chunk_check("\n".join(outputs)):
            return None  # damaged (a write is whole: a disk's fault, or an edit by hand)
        if not all(os.path.isfile(p) for p in extras.get("paths", ())):
            return None
        reached(path)
        return outputs, extras

    def put(self, chunk: list[str], outputs: list[str], extras: dict | None = None) -> None:
        path, digest = self._path(chunk)
        lines = [out.rstrip("\n") for out in outputs]
        if any("\n" in line for line in lines):
            return  # not one-line JSON records: not remembered
        head = ENTRY_SEPARATOR.join([digest, json.dumps(extras or {}), chunk_check("\n".join(lines))])
        text = "\n".join([head, *lines]) + "\n"
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)

    def map(self, lines: Iterable[str],
            make: Callable[[list[str]], tuple[list[str], dict]]) -> Iterator[tuple[list[str], dict, bool]]:
        """Each chunk's (output lines, extras, whether remembered): remembered, or made by `make`
        (and remembered), in order."""
        for chunk in content_chunks(lines):
            hit = self.get(chunk)
            if hit is not None:
                yield *hit, True
                continue
            outputs, extras = make(chunk)
            self.put(chunk, outputs, extras)
            yield outputs, extras, False
