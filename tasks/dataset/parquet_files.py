"""The parquet files of a publication: a split's rows cut into files at content-defined places,
each named by a digest of what it holds, so that a file nothing changed in is taken over from the
last publication (a hard link) instead of written again."""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets
import pyarrow as pa

# Rows per file, on average (files are cut where an item's hash says, see file_groups): small
# enough that a night's new images rewrite a few percent of the rows, not a split's every row;
# 10,000 images make ~300 files.
ROWS_PER_FILE = 64
ROW_FORMAT = "2"  # bump when publish's rows change: files in an older format are written anew
FILE_NAME = re.compile(r"(train|validation|test)-[0-9a-f]{12}-\d{5}-(?P<digest>[0-9a-f]{16})\.parquet")


def _closes_a_file(item: str) -> bool:
    return zlib.crc32(item.encode()) % ROWS_PER_FILE == 0


def file_groups(records: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """A split's records, as (item, manifest line) in item order with flips right after their
    image, cut into parquet files at content-defined places, as the image shards are cut: after
    an image whose item hashes to 0 modulo ROWS_PER_FILE. New images change only the file they
    fall into."""
    group: list[tuple[str, str]] = []
    for item, line in records:
        if group and item != group[-1][0] and (
                _closes_a_file(group[-1][0]) or len(group) >= 4 * ROWS_PER_FILE):
            yield group
            group = []
        group.append((item, line))
    if group:
        yield group


def group_digest(group: list[tuple[str, str]]) -> str:
    """What a file holds: its records (content hashes, boxes, targets, where the pixels are: the
    manifest lines as they are) and the row format, so an unchanged group's file can be taken
    over as it is."""
    digest = hashlib.sha256(f"{ROW_FORMAT}|{datasets.__version__}|{pa.__version__}".encode())
    for _, line in group:
        digest.update(line.rstrip("\n").encode())
    return digest.hexdigest()[:16]


def files_by_digest(folder: Path) -> dict[str, Path]:
    """The parquet files of the publication in `folder` (if any), by their group digest."""
    found = {}
    for path in (folder / "data").glob("*.parquet") if (folder / "data").is_dir() else []:
        match = FILE_NAME.fullmatch(path.name)
        if match:
            found[match.group("digest")] = path
    return found


def link(existing: Path, path: Path) -> bool:
    try:
        os.link(existing, path)
        return True
    except OSError:  # gone meanwhile, or a file system without hard links: write it
        return False
