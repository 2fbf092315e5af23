"""The record that travels the whole way, quarantine entries, and manifest I/O.

Box convention (written down once, tested in tests/images/test_boxes.py):
float pixel coordinates, 0-based, x2/y2 *exclusive* edges, so width = x2 - x1.
Pascal VOC stores 1-based *inclusive* pixel indices: xmin..xmax covers xmax - xmin + 1
pixels, hence x1 = xmin - 1 and x2 = xmax. COCO's [x, y, w, h] is already 0-based: x2 = x + w.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, Field


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    difficult: bool = False
    truncated: bool = False

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


def voc_to_box(xmin: float, ymin: float, xmax: float, ymax: float, label: str, **attrs) -> Box:
    """Pascal VOC's 1-based inclusive corners -> our 0-based, exclusive-edge box."""
    return Box(x1=xmin - 1, y1=ymin - 1, x2=xmax, y2=ymax, label=label, **attrs)


def coco_to_box(x: float, y: float, w: float, h: float, label: str) -> Box:
    return Box(x1=x, y1=y, x2=x + w, y2=y + h, label=label)


class Sample(BaseModel):
    """One image with its boxes, from ingest to publish."""

    item: str = Field(description="stable id: the annotation (or image) path relative to the source")
    image_path: str = Field(description="absolute path of the source image")
    source: str = Field(description="the annotation this came from (file, or file#image_id)")
    boxes: list[Box] = []
    declared_width: int | None = None
    declared_height: int | None = None
    file_size: int = 0
    file_mtime_ns: int = 0
    # ctime too: a same-size edit whose mtime was set back is still another image (no tool sets
    # ctime back), so its record, and the image step's memo keyed on it, change
    file_ctime_ns: int = 0
    # Filled in by the image step, from the real pixels (after EXIF orientation):
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    grayscale: bool = False
    image_format: str = ""
    image_op: str | None = Field(None, description="how the source was re-rendered (images/store.py: render)")
    processed_path: str | None = Field(None, description="the image the dataset uses, if not the source")
    # Filled in by split / augment / loc targets:
    split: str | None = None
    augmentation: str = "none"
    target: str | None = None
    # Tiling (dense images): a tile names its image and its window (x, y, width, height); a test
    # image too dense for one target stays whole and is scored through tiles (`sliced`).
    tile_of: str | None = None
    tile: tuple[int, int, int, int] | None = None
    sliced: bool = False

    @property
    def dataset_image(self) -> str:
        return self.processed_path or self.image_path


class Rejection(BaseModel):
    """Something that could not be used, with a stable reason code."""

    item: str
    reason: str
    detail: str = ""


def box_rejections(item: str, count: int, reason: str, detail: str = "") -> list[Rejection]:
    """The boxes of an image that left (`item#0`, `item#1`, ...), each counted under `reason`."""
    return [Rejection(item=f"{item}#{n}", reason=reason, detail=detail) for n in range(count)]


class Manifest(BaseModel, frozen=True):
    """A JSONL file of records plus the hash of its content: what one step hands the next.
    Tasks take and return these (small, hashable), never images or tensors."""

    path: str
    digest: str
    count: int


def _dump(record: BaseModel) -> str:
    # pydantic's own serializer: fields in declaration order, the same bytes for the same record
    return record.model_dump_json()


class ManifestWriter:
    """Streams records into a manifest (hashing as it writes), so no step holds the whole set:
    `with ManifestWriter(folder, kind) as out: out.add(record)`, then `out.manifest`."""

    def __init__(self, folder: str | Path, kind: str) -> None:
        self.folder, self.kind = Path(folder), kind
        self.folder.mkdir(parents=True, exist_ok=True)
        # A private temporary name, then an atomic rename: neither a crash nor a second run
        # writing the same manifest at the same time leaves half a file behind.
        self._tmp = self.folder / f".{kind}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        self._handle = open(self._tmp, "wb")  # noqa: SIM115 - closed in __exit__
        self._digest = hashlib.sha256()
        self.count = 0
        self.manifest: Manifest | None = None

    def add(self, record: BaseModel) -> None:
        self.add_line(_dump(record))

    def add_line(self, json_line: str) -> None:
        """A record already serialized by a manifest (copied through without parsing)."""
        line = (json_line.rstrip("\n") + "\n").encode("utf-8")
        self._digest.update(line)
        self._handle.write(line)
        self.count += 1

    def add_lines(self, json_lines: list[str]) -> None:
        """`add_line` for each of them, in one write (a chunk of records copied through)."""
        data = "".join(line.rstrip("\n") + "\n" for line in json_lines).encode("utf-8")
        self._digest.update(data)
        self._handle.write(data)
        self.count += len(json_lines)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._handle.close()
        if kind is not None:
            self._tmp.unlink(missing_ok=True)
            return
        digest = self._digest.hexdigest()
        path = self.folder / f"{self.kind}-{digest[:20]}.jsonl"
        if path.exists():
            self._tmp.unlink()
        else:
            self._tmp.replace(path)
        self.manifest = Manifest(path=str(path), digest=digest, count=self.count)


def write_manifest(records: Iterable[BaseModel], folder: str | Path, kind: str) -> Manifest:
    """Write records content-addressed under `folder`; the same records give the same file."""
    with ManifestWriter(folder, kind) as out:
        for record in records:
            out.add(record)
    return out.manifest


def write_lines(json_lines: Iterable[str], folder: str | Path, kind: str) -> Manifest:
    """`write_manifest` for records already serialized (copied through without parsing)."""
    with ManifestWriter(folder, kind) as out:
        for line in json_lines:
            out.add_line(line)
    return out.manifest


def read_records(manifest: Manifest | str | Path, model: type[BaseModel] = Sample) -> Iterator:
    path = manifest.path if isinstance(manifest, Manifest) else manifest
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield model.model_validate_json(line)


def read_samples(manifest: Manifest | str | Path) -> list[Sample]:
    return list(read_records(manifest, Sample))


def read_rejections(manifest: Manifest | str | Path) -> list[Rejection]:
    return list(read_records(manifest, Rejection))


def read_lines(manifest: Manifest) -> Iterator[str]:
    """The raw JSON lines of a manifest, for steps that only move records around."""
    with open(manifest.path, encoding="utf-8") as handle:
        yield from (line for line in handle if not line.isspace())
