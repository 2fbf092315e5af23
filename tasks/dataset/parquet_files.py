"""The parquet files of a publication: a split's rows cut into files at content-defined places,
each named by a digest of what it holds, so that a file nothing changed in is taken over from the
last publication (a hard link) instead of written again."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

# Images per file, on average (files are cut where an item's hash says, see file_groups): small
# enough that a night's new images rewrite a few percent of the rows, not a split's every row;
# 10,000 small images make ~300 files. Big images cut files sooner, at ~BYTES_PER_FILE: what
# one new image costs a night is rewriting the file it falls into.
ROWS_PER_FILE = 64
BYTES_PER_FILE = 16 * 2**20
ROW_FORMAT = "2"  # bump when publish's rows change: files in an older format are written anew
FILE_NAME = re.compile(r"(train|validation|test)-[0-9a-f]{12}-\d{5}-(?P<digest>[0-9a-f]{16})\.parquet")


def _closes_a_file(item: str, item_bytes: int) -> bool:
    """A file ends after this item: 1 in ROWS_PER_FILE items by its hash's low bits, and, by its
    high bits, with odds item_bytes / BYTES_PER_FILE. Both depend on the item alone, so a new
    image moves no cut but its own."""
    crc = zlib.crc32(item.encode())
    return crc % ROWS_PER_FILE == 0 or (crc >> 8) < item_bytes * (1 << 24) // BYTES_PER_FILE


def file_groups(records: Iterable[tuple[str, str, int]]) -> Iterator[list[tuple[str, str, int]]]:
    """A split's records, as (item, manifest line, image bytes) in item order with flips right
    after their image, cut into parquet files at content-defined places, as the image shards
    are cut (`_closes_a_file`). New images change only the file they fall into."""
    group: list[tuple[str, str, int]] = []
    item_bytes = group_bytes = 0
    for item, line, size in records:
        if group and item != group[-1][0]:
            if (_closes_a_file(group[-1][0], item_bytes) or len(group) >= 4 * ROWS_PER_FILE
                    or group_bytes >= 4 * BYTES_PER_FILE):
                yield group
                group, group_bytes = [], 0
            item_bytes = 0
        group.append((item, line, size))
        item_bytes += size
        group_bytes += size
    if group:
        yield group


@functools.cache
def _datasets_version() -> str:
    # (from its metadata: importing `datasets` takes a second that an unchanged rerun need not wait)
    return importlib.metadata.version("datasets")


def group_digest(group: list[tuple[str, str, int]]) -> str:
    """What a file holds: its records (content hashes, boxes, targets, where the pixels are: the
    manifest lines as they are) and the row format, so an unchanged group's file can be taken
    over as it is."""
    digest = hashlib.sha256(f"{ROW_FORMAT}|{_datasets_version()}|{pa.__version__}".encode())
    for _, line, _ in group:
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


def leaf_columns(field: pa.Field, prefix: str = "") -> list[str]:
    """Parquet's names for the leaf columns under an arrow field (`boxes.list.element...`)."""
    name = prefix + field.name
    if pa.types.is_struct(field.type):
        return [leaf for child in field.type for leaf in leaf_columns(child, name + ".")]
    if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
        return leaf_columns(pa.field("element", field.type.value_type), name + ".list.")
    return [name]


@functools.cache
def dataset_schema() -> tuple[pa.Schema, list[str]]:
    """The parquet schema of a published row (the `datasets` features), and the columns
    written with dictionaries. Built on first use: importing `datasets` takes a second, which
    a command that publishes nothing (an unchanged rerun: every step Cached) need not wait."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(),
        "image_id": datasets.Value("string"),
        "source_id": datasets.Value("string"),
        "sha256": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "labels": datasets.List(datasets.Value("string")),
        "difficult": datasets.List(datasets.Value("bool")),
        "augmentation": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "target": datasets.Value("string"),
        "tile": datasets.List(datasets.Value("int32")),  # x, y, width, height in the source image
        "sliced": datasets.Value("bool"),  # a whole test image scored through tiles
    })
    schema = features.arrow_schema  # (a property: computed again on every use)
    # Every column but the image bytes: each image is unique and already compressed, so a
    # dictionary of them only costs (it was 2/3 of writing a file of big images).
    dictionary = [leaf for field in schema for leaf in leaf_columns(field) if leaf != "image.bytes"]
    return schema, dictionary


def swap_in(staging: Path, folder: Path, attempts: int = 5) -> None:
    """Replace `folder` by the finished `staging` folder with renames only, so a reader never
    sees half a dataset, and two runs publishing at once both end with a complete one."""
    for _ in range(attempts):
        if folder.exists():
            trash = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            try:
                folder.rename(trash)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(trash, ignore_errors=True)
        try:
            staging.rename(folder)
            return
        except OSError:
            continue  # another run put its folder there first: move it aside and try again
    raise OSError(f"could not publish into {folder}: it keeps being replaced")
