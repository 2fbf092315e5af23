"""LabelImg / Pascal VOC XML -> Samples + Rejections.

Entity expansion and external entities are refused (defusedxml), `<filename>` may not leave the
images folder, `<path>` (an absolute path on the annotator's machine) is never followed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from tasks.core.caching import code_version
from tasks.core.labels import ANY_LABEL, LabelRules
from tasks.core.memo import LineMemo
from tasks.core.records import Box, Rejection, Sample, box_rejections, voc_to_box
from tasks.ingest.results import IngestResult, reject_unclaimed_images
from tasks.ingest.sources import (
    PathOutsideSource,
    SourceListing,
    find_image,
    index_images,
    relative_posix,
)

MAX_XML_BYTES = 10_000_000  # a LabelImg file with thousands of boxes is ~1 MB


@dataclass
class VocObject:
    name: str
    bndbox: dict[str, str | None]
    difficult: bool
    truncated: bool


@dataclass
class VocAnnotation:
    filename: str | None
    path: str | None
    width: int | None
    height: int | None
    depth: int | None
    objects: list[VocObject]


def _text(node: Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _flag(value: str | None) -> bool:
    return (value or "0").strip().lower() in ("1", "true", "yes")


def parse_voc(xml_bytes: bytes) -> VocAnnotation:
    """Parse one VOC XML. Raises DefusedXmlException (entities) or ParseError (malformed)."""
    root = SafeET.fromstring(xml_bytes)
    if root.tag != "annotation":
        raise ParseError(f"root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        bndbox = obj.find("bndbox")
        coords = {key: _text(bndbox, key) for key in ("xmin", "ymin", "xmax", "ymax")}
        objects.append(
            VocObject(
                name=(_text(obj, "name") or ""),
                bndbox=coords,
                difficult=_flag(_text(obj, "difficult")),
                truncated=_flag(_text(obj, "truncated")),
            )
        )
    return VocAnnotation(
        filename=_text(root, "filename"),
        path=_text(root, "path"),
        width=_int_or_none(_text(size, "width")),
        height=_int_or_none(_text(size, "height")),
        depth=_int_or_none(_text(size, "depth")),
        objects=objects,
    )


def object_to_box(obj: VocObject, rules: LabelRules) -> Box | tuple[str, str]:
    """A Box, or (reason, detail) when the object cannot become one."""
    if not obj.name:
        return "box_invalid", "object without <name>"
    label = rules.resolve(obj.name)
    if isinstance(label, tuple):
        return label
    try:
        xmin, ymin, xmax, ymax = (float(obj.bndbox[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        return "box_invalid", f"bndbox is not four numbers: {obj.bndbox}"
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        return "box_invalid", f"bndbox has non-finite values: {obj.bndbox}"
    box = voc_to_box(xmin, ymin, xmax, ymax, label, difficult=obj.difficult,
                     truncated=obj.truncated)
    if box.x2 < box.x1 or box.y2 < box.y1:
        return "box_degenerate", f"inverted corners {obj.bndbox}"
    if box.width == 0 or box.height == 0:
        return "box_degenerate", f"zero area {obj.bndbox}"
    return box


def parse_memo(store_root: str | Path) -> LineMemo:
    """Parsed XMLs by content hash: a file seen before, wherever it is, is not parsed again."""
    return LineMemo(store_root, "voc-parse", "|".join([code_version(), defusedxml.__version__]))


def _annotation_of(entry: str) -> VocAnnotation:
    *header, objects = json.loads(entry)
    return VocAnnotation(*header, [VocObject(*fields) for fields in objects])


def _entry_of(a: VocAnnotation) -> str:
    return json.dumps([a.filename, a.path, a.width, a.height, a.depth, [
        [o.name, o.bndbox, o.difficult, o.truncated] for o in a.objects]])


def remembered_parse(xml_bytes: bytes, memo: LineMemo | None, file_state: str) -> VocAnnotation:
    """`parse_voc`, through the memo when there is one (only files that parse are remembered),
    under the content hash and under `file_state` (the file's path and stat)."""
    if memo is None:
        return parse_voc(xml_bytes)
    content = hashlib.sha256(xml_bytes).hexdigest()
    if (hit := memo.get(content)) is not None:
        memo.put(file_state, hit[0])
        return _annotation_of(hit[0][0])
    annotation = parse_voc(xml_bytes)
    entry = [_entry_of(annotation)]
    memo.put(content, entry)
    memo.put(file_state, entry)
    return annotation


def read_annotation(xml_path: Path, annotations_root: Path, item: str, listing: SourceListing,
                    memo: LineMemo | None = None) -> VocAnnotation | Rejection:
    """One XML parsed, or the reason it cannot be: a symlink out of the source is never read,
    entities are refused, oversized, malformed or absurdly nested files are named as such.
    A plain file the listing shows unchanged (path, size, mtime, ctime, inode) since a run that
    parsed it is not read again: its parse is remembered under that state, as git trusts its
    index."""
    try:
        listing.check_inside(annotations_root, xml_path)
        state = listing.stat(xml_path)
        if state.st_size > MAX_XML_BYTES:
            return Rejection(item=item, reason="xml_malformed",
                             detail=f"larger than {MAX_XML_BYTES} bytes")
        file_state = "\0".join(map(str, (  # ctime too: unlike mtime, no tool sets it back
            xml_path, state.st_size, state.st_mtime_ns, state.st_ctime_ns, state.st_ino)))
        if memo is not None and (hit := memo.get(file_state)) is not None:
            return _annotation_of(hit[0][0])
        return remembered_parse(xml_path.read_bytes(), memo, file_state)
    except PathOutsideSource as exc:
        return Rejection(item=item, reason="path_outside_source", detail=str(exc))
    except DefusedXmlException as exc:
        return Rejection(item=item, reason="xml_forbidden", detail=f"{type(exc).__name__}: {exc}")
    except RecursionError:
        return Rejection(item=item, reason="xml_malformed", detail="nested too deeply to parse")
    except (ParseError, UnicodeDecodeError, ValueError, OSError) as exc:
        return Rejection(item=item, reason="xml_malformed", detail=str(exc))


def read_passes(files: list[tuple[Path, Path]], item: str, listing: SourceListing,
                memo: LineMemo | None = None) -> VocAnnotation | Rejection:
    """The XMLs of one image from several annotation folders (annotation passes), merged: their
    objects together, one filename and size. Any unreadable file, or sizes that disagree,
    quarantine the image: training on part of its labels would teach that the rest is
    background."""
    merged: VocAnnotation | None = None
    for root, xml_path in files:
        annotation = read_annotation(xml_path, root, item, listing, memo)
        if isinstance(annotation, Rejection):
            if len(files) > 1:
                annotation.detail = f"{xml_path}: {annotation.detail}"
            return annotation
        if merged is None:
            merged = annotation
            continue
        sizes = [(a.width, a.height) for a in (merged, annotation)]
        if all(all(size) for size in sizes) and sizes[0] != sizes[1]:
            return Rejection(item=item, reason="annotation_conflict", detail=(
                f"{files[0][1]} says {sizes[0][0]}x{sizes[0][1]}, {xml_path} says "
                f"{sizes[1][0]}x{sizes[1][1]}"))
        merged.objects += annotation.objects
        merged.filename = merged.filename or annotation.filename
        merged.width, merged.height = merged.width or annotation.width, merged.height or annotation.height
    return merged


def ingest_voc(
    images_root: Path,
    annotations_roots: Path | list[Path],
    listing: SourceListing,
    rules: LabelRules = ANY_LABEL,
    on_sample: Callable[[Sample], None] | None = None,
    memo: LineMemo | None = None,
) -> IngestResult:
    """Every XML becomes a Sample or a Rejection; every image no XML claims is rejected too.
    With several annotation folders, XMLs at the same relative path are one image's passes and
    merge (a box drawn identically in two passes is kept once). With `on_sample`, samples go
    there as they are made instead of into `result.samples`; with a `memo` (`parse_memo`), an
    XML parsed in an earlier run is not parsed again."""
    roots = annotations_roots if isinstance(annotations_roots, list) else [annotations_roots]
    result = IngestResult()
    keep = on_sample or result.samples.append
    index = index_images(images_root, listing.images)
    passes: dict[str, list[tuple[Path, Path]]] = {}
    for xml_path in sorted(listing.annotations, key=os.fspath):
        root = next(r for r in roots if os.fspath(xml_path).startswith(os.path.join(r, "")))
        passes.setdefault(relative_posix(xml_path, root), []).append((root, xml_path))
    claimed: dict[Path, str] = {}
    for item, files in sorted(passes.items()):
        xml_path = files[0][1]
        rel_folder = posixpath.dirname(item)
        annotation = read_passes(files, item, listing, memo)
        if isinstance(annotation, Rejection):
            result.rejected.append(annotation)
            # Its image (by the XML's stem) leaves with it: counted once, under this reason,
            # not a second time as an image without annotation.
            image = find_image(None, rel_folder, xml_path.stem, index)
            if image is not None:
                claimed.setdefault(image, item)
            continue
        result.boxes_found += len(annotation.objects)
        try:
            image = find_image(annotation.filename, rel_folder, xml_path.stem, index,
                               annotation.path)
        except PathOutsideSource as exc:
            _reject_with_boxes(result, item, annotation, "path_outside_source", str(exc))
            continue
        if image is not None and image not in claimed:
            try:
                listing.check_inside(images_root, image)  # a symlink may still point out
            except PathOutsideSource as exc:
                claimed[image] = item  # accounted for by this XML's rejection
                _reject_with_boxes(result, item, annotation, "path_outside_source", str(exc))
                continue
        if image is None:
            _reject_with_boxes(result, item, annotation, "image_missing",
                               f"<filename>{annotation.filename}</filename> and stem "
                               f"{xml_path.stem!r} match no image under {images_root}")
            continue
        if image in claimed:
            _reject_with_boxes(result, item, annotation, "duplicate_image",
                               f"{image.name} is already annotated by {claimed[image]}")
            continue
        claimed[image] = item
        result.several_passes += len(files) > 1
        boxes: list[Box] = []
        for number, obj in enumerate(annotation.objects):
            result.spellings[obj.name] += 1
            box = object_to_box(obj, rules)
            if isinstance(box, Box) and len(files) > 1 and box in boxes:
                box = "box_duplicate", "the same box and class again (drawn in two passes?)"
            if isinstance(box, Box):
                boxes.append(box)
            else:
                reason, detail = box
                result.rejected_boxes.append(Rejection(item=f"{item}#{number}", reason=reason,
                                                       detail=detail))
        stat = listing.stat(image)
        keep(Sample(
            item=item, image_path=str(image), source=";".join(str(p) for _, p in files),
            boxes=boxes, declared_width=annotation.width or None,
            declared_height=annotation.height or None,
            file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns,
        ))
    reject_unclaimed_images(images_root, listing, set(claimed), result)
    return result


def _reject_with_boxes(result: IngestResult, item: str, annotation: VocAnnotation, reason: str,
                       detail: str) -> None:
    result.rejected.append(Rejection(item=item, reason=reason, detail=detail))
    result.rejected_boxes += box_rejections(item, len(annotation.objects), "image_rejected", reason)
