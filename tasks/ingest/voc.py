"""LabelImg / Pascal VOC XML -> Samples + Rejections.

Entity expansion and external entities are refused (defusedxml), `<filename>` may not leave the
images folder, `<path>` (an absolute path on the annotator's machine) is never followed.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException

from tasks.core.labels import ANY_LABEL, LabelRules
from tasks.core.memo import ChunkMemo, LineMemo, content_chunks, line_digest
from tasks.core.records import Box, Rejection, Sample, box_rejections, voc_to_box
from tasks.ingest.results import IngestResult, reject_unclaimed_images
from tasks.ingest.sources import (
    PathOutsideSource,
    SourceListing,
    find_image,
    index_images,
    relative_posix,
    stat_line,
    stem_of,
)
from tasks.ingest.voc_outcomes import (
    Outcome,
    chunk_entry,
    item_key,
    recall,
    rejections,
    remember,
    still_its_image,
    take_chunk,
)
from tasks.ingest.voc_parse import (  # noqa: F401 - parse_voc, parse_memo: this stage's API
    VocAnnotation,
    VocObject,
    annotation_of,
    parse_memo,
    parse_voc,
    remembered_parse,
)

MAX_XML_BYTES = 10_000_000  # a LabelImg file with thousands of boxes is ~1 MB


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


def read_annotation(xml_path: str | Path, annotations_root: Path, item: str, listing: SourceListing,
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
        known_as = stat_line(xml_path, state)
        if memo is not None and (hit := memo.get(known_as)) is not None:
            return annotation_of(hit[0][0])
        return remembered_parse(Path(xml_path).read_bytes(), memo, known_as)
    except PathOutsideSource as exc:
        return Rejection(item=item, reason="path_outside_source", detail=str(exc))
    except DefusedXmlException as exc:
        return Rejection(item=item, reason="xml_forbidden", detail=f"{type(exc).__name__}: {exc}")
    except RecursionError:
        return Rejection(item=item, reason="xml_malformed", detail="nested too deeply to parse")
    except (ParseError, UnicodeDecodeError, ValueError, OSError) as exc:
        return Rejection(item=item, reason="xml_malformed", detail=str(exc))


def read_passes(files: list[tuple[Path, str]], item: str, listing: SourceListing,
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


def make_sample(item: str, files: list[tuple[Path, str]], annotation: VocAnnotation,
                image: str, listing: SourceListing, rules: LabelRules) -> Outcome:
    """The Sample of an annotated image (as its manifest line), with the boxes it cannot keep."""
    boxes: list[Box] = []
    refused: list[Rejection] = []
    for number, obj in enumerate(annotation.objects):
        box = object_to_box(obj, rules)
        if isinstance(box, Box) and len(files) > 1 and box in boxes:
            box = "box_duplicate", "the same box and class again (drawn in two passes?)"
        if isinstance(box, Box):
            boxes.append(box)
        else:
            refused.append(Rejection(item=f"{item}#{number}", reason=box[0], detail=box[1]))
    stat = listing.stat(image)
    sample = Sample(item=item, image_path=image, source=";".join(p for _, p in files),
                    boxes=boxes, declared_width=annotation.width or None,
                    declared_height=annotation.height or None,
                    file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns,
                    file_ctime_ns=stat.st_ctime_ns)
    return Outcome(line=sample.model_dump_json(), rejected_boxes=[r.model_dump_json() for r in refused],
                   filename=annotation.filename, path_hint=annotation.path, image=image,
                   image_state=stat_line(image, stat),
                   boxes_found=len(annotation.objects),
                   spellings=dict(Counter(obj.name for obj in annotation.objects)))


def ingest_voc(
    images_root: Path,
    annotations_roots: Path | list[Path],
    listing: SourceListing,
    rules: LabelRules = ANY_LABEL,
    on_line: Callable[[str], None] | None = None,
    memo: LineMemo | None = None,
    outcomes: LineMemo | None = None,
    chunks: ChunkMemo | None = None,
) -> IngestResult:
    """Every XML becomes a Sample or a Rejection; every image no XML claims is rejected too.
    With several annotation folders, XMLs at the same relative path are one image's passes and
    merge (a box drawn identically in two passes is kept once). With `on_line`, samples go
    there as manifest lines as they are made instead of into `result.samples`; with a `memo`
    (`parse_memo`), an XML parsed in an earlier run is not parsed again; with `outcomes`
    (`voc_outcomes.outcome_memo`), an item unchanged since an earlier run is not made again,
    and with `chunks` too (`outcome_chunks`), a chunk of such items comes back at once."""
    roots = annotations_roots if isinstance(annotations_roots, list) else [annotations_roots]
    result = IngestResult()
    keep = on_line or (lambda line: result.samples.append(Sample.model_validate_json(line)))
    # Paths as strings from the listing on: pathlib's parsing of 200,000 paths was a third of
    # a night's ingest at 100,000 images.
    index = index_images(images_root, listing.image_paths)
    passes: dict[str, list[tuple[Path, str]]] = {}
    root_prefixes = [(root, os.path.join(root, "")) for root in roots]
    for xml_path in sorted(listing.annotation_paths):
        root = next(r for r, prefix in root_prefixes if xml_path.startswith(prefix))
        passes.setdefault(relative_posix(xml_path, root), []).append((root, xml_path))
    claimed: dict[str, str] = {}

    def make(item: str, files: list[tuple[Path, str]], key: str | None) -> Outcome | None:
        """The item's Sample kept (or its rejection added); its Outcome, None if rejected."""
        stem, rel_folder = stem_of(files[0][1]), posixpath.dirname(item)
        made = recall(outcomes, key) if key is not None else None
        image = None if made is None else still_its_image(made, rel_folder, stem, index,
                                                          claimed, images_root, listing)
        if made is None or image is None:
            annotation = read_passes(files, item, listing, memo)
            image = _image_of(annotation, result, item, rel_folder, stem, index, claimed,
                              images_root, listing)
            if image is None:
                return None
            made = make_sample(item, files, annotation, image, listing, rules)
            if key is not None:
                remember(outcomes, key, made)
        claimed[image] = item
        result.several_passes += len(files) > 1
        result.boxes_found += made.boxes_found
        result.spellings.update(made.spellings)
        result.rejected_boxes += rejections(made.rejected_boxes)
        keep(made.line)
        return made

    keyed = [(item, files, item_key(item, files, listing) if outcomes is not None else None)
             for item, files in sorted(passes.items())]
    if chunks is None:
        for item, files, key in keyed:
            make(item, files, key)
    else:
        # A chunk's line per item: its key's digest (an item without a key: never remembered).
        lines = [line_digest(key) if key is not None else "\0" + item for item, _, key in keyed]
        start = 0
        for chunk in content_chunks(lines):
            members, start = keyed[start:start + len(chunk)], start + len(chunk)
            keyed_chunk = all(key for *_, key in members)
            remembered = chunks.get(chunk) if keyed_chunk else None
            if remembered is not None and take_chunk(*remembered, members, result, keep, index,
                                                      claimed, images_root, listing):
                continue
            made = [make(item, files, key) for item, files, key in members]
            if keyed_chunk and all(made):
                chunks.put(chunk, *chunk_entry(made))
    reject_unclaimed_images(images_root, listing, set(claimed), result)
    return result


def _image_of(annotation: VocAnnotation | Rejection, result: IngestResult, item: str,
              rel_folder: str, stem: str, index: dict[str, str], claimed: dict[str, str],
              images_root: Path, listing: SourceListing) -> str | None:
    """The image an annotation labels, or None with the item's rejection (and its boxes')
    added to the result."""
    if isinstance(annotation, Rejection):
        result.rejected.append(annotation)
        # Its image (by the XML's stem) leaves with it: counted once, under this reason,
        # not a second time as an image without annotation.
        image = find_image(None, rel_folder, stem, index)
        if image is not None:
            claimed.setdefault(image, item)
        return None
    try:
        image = find_image(annotation.filename, rel_folder, stem, index, annotation.path)
    except PathOutsideSource as exc:
        return _reject_with_boxes(result, item, annotation, "path_outside_source", str(exc))
    if image is not None and image not in claimed:
        try:
            listing.check_inside(images_root, image)  # a symlink may still point out
        except PathOutsideSource as exc:
            claimed[image] = item  # accounted for by this XML's rejection
            return _reject_with_boxes(result, item, annotation, "path_outside_source", str(exc))
    if image is None:
        return _reject_with_boxes(result, item, annotation, "image_missing",
                                  f"<filename>{annotation.filename}</filename> and stem "
                                  f"{stem!r} match no image under {images_root}")
    if image in claimed:
        return _reject_with_boxes(result, item, annotation, "duplicate_image",
                                  f"{os.path.basename(image)} is already annotated by {claimed[image]}")
    return image


def _reject_with_boxes(result: IngestResult, item: str, annotation: VocAnnotation, reason: str,
                       detail: str) -> None:
    """The item rejected, its boxes with it; None: it has no image to use."""
    result.boxes_found += len(annotation.objects)
    result.rejected.append(Rejection(item=item, reason=reason, detail=detail))
    result.rejected_boxes += box_rejections(item, len(annotation.objects), "image_rejected", reason)
