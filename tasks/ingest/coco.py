"""COCO JSON -> Samples + Rejections.

Handles ids that start at 0, string ids, unused categories, a wrong `area` (never read: areas are
recomputed from the boxes), duplicate ids, annotations whose image does not exist and
`file_name`s that try to leave the images folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from tasks.core.labels import ANY_LABEL, LabelRules
from tasks.core.records import Box, Rejection, Sample, coco_to_box
from tasks.ingest.results import IngestResult, reject_unclaimed_images
from tasks.ingest.sources import (
    PathOutsideSource,
    SourceListing,
    check_relative_name,
    index_images,
    inside,
)

MAX_JSON_BYTES = 2_000_000_000


def _annotation_to_box(ann: dict, categories: dict, rules: LabelRules) -> Box | tuple[str, str]:
    if ann.get("iscrowd") in (1, True):
        return "box_crowd", "iscrowd=1 regions are not single objects"
    category = categories.get(_key(ann.get("category_id")))
    if category is None:
        return "unknown_label", f"category_id {ann.get('category_id')!r} is not in categories"
    label = rules.resolve(category)
    if isinstance(label, tuple):
        return label
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return "box_invalid", f"bbox is not [x, y, w, h]: {bbox!r}"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "box_invalid", f"bbox is not four numbers: {bbox!r}"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "box_invalid", f"bbox has non-finite values: {bbox!r}"
    if w < 0 or h < 0:
        return "box_degenerate", f"negative width or height: {bbox!r}"
    if w == 0 or h == 0:
        return "box_degenerate", f"zero area: {bbox!r}"
    return coco_to_box(x, y, w, h, label)


def _key(value: object) -> str:
    # ids may be ints or strings in the wild; compare them as text, as pycocotools users expect.
    return str(value)


def ingest_coco(
    images_root: Path, json_path: Path, listing: SourceListing, rules: LabelRules = ANY_LABEL,
    on_sample: Callable[[Sample], None] | None = None,
) -> IngestResult:
    result = IngestResult()
    keep = on_sample or result.samples.append
    source = json_path.name
    try:
        if json_path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        data = json.loads(json_path.read_bytes())
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError("no 'images' list at the top level")
    except (OSError, ValueError) as exc:
        result.rejected.append(Rejection(item=source, reason="annotation_invalid", detail=str(exc)))
        reject_unclaimed_images(images_root, listing, set(), result)
        return result

    categories: dict[str, str] = {}
    for category in data.get("categories") or []:
        if isinstance(category, dict) and "id" in category and category.get("name"):
            categories.setdefault(_key(category["id"]), str(category["name"]).strip())

    # Annotations grouped by image, with duplicate ids and orphans rejected by name.
    images_by_id: dict[str, dict] = {}
    image_items: list[tuple[str, dict]] = []
    for position, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            result.rejected.append(Rejection(item=f"{source}#images[{position}]",
                                             reason="annotation_invalid",
                                             detail="image entry without id or file_name"))
            continue
        item = str(image["file_name"]).replace("\\", "/")
        if _key(image["id"]) in images_by_id:
            result.rejected.append(Rejection(item=item, reason="duplicate_id",
                                             detail=f"image id {image['id']!r} is used twice"))
            continue
        images_by_id[_key(image["id"])] = image
        image_items.append((item, image))

    boxes_by_image: dict[str, list[tuple[int, dict]]] = {}
    seen_annotation_ids: set[str] = set()
    for position, ann in enumerate(data.get("annotations") or []):
        result.boxes_found += 1
        label = f"{source}#annotations[{position}]"
        if not isinstance(ann, dict):
            result.rejected_boxes.append(Rejection(item=label, reason="box_invalid",
                                                   detail="annotation is not an object"))
            continue
        if "id" in ann:
            if _key(ann["id"]) in seen_annotation_ids:
                result.rejected_boxes.append(Rejection(item=label, reason="duplicate_id",
                                                       detail=f"annotation id {ann['id']!r} is used twice"))
                continue
            seen_annotation_ids.add(_key(ann["id"]))
        if _key(ann.get("image_id")) not in images_by_id:
            detail = f"image_id {ann.get('image_id')!r} is not in images"
            result.rejected_boxes.append(Rejection(item=label, reason="annotation_orphan", detail=detail))
            continue
        boxes_by_image.setdefault(_key(ann["image_id"]), []).append((position, ann))

    index = index_images(images_root, listing.images)
    claimed: set[Path] = set()
    for item, image in image_items:
        annotations = boxes_by_image.get(_key(image["id"]), [])
        try:
            name = check_relative_name(item)
            path = index.get(name.lower())
            if path is not None:
                inside(images_root, path)
        except PathOutsideSource as exc:
            result.rejected.append(Rejection(item=item, reason="path_outside_source", detail=str(exc)))
            _reject_boxes_of(item, annotations, "image_rejected", result)
            continue
        if path is None:
            result.rejected.append(Rejection(item=item, reason="image_missing",
                                             detail=f"{name} is not under {images_root}"))
            _reject_boxes_of(item, annotations, "image_rejected", result)
            continue
        if path in claimed:
            result.rejected.append(Rejection(item=item, reason="duplicate_image",
                                             detail=f"{name} appears twice in images"))
            _reject_boxes_of(item, annotations, "image_rejected", result)
            continue
        claimed.add(path)
        boxes = []
        for position, ann in annotations:
            if (category := categories.get(_key(ann.get("category_id")))) is not None:
                result.spellings[category] += 1
            box = _annotation_to_box(ann, categories, rules)
            if isinstance(box, Box):
                boxes.append(box)
            else:
                result.rejected_boxes.append(Rejection(item=f"{item}#annotations[{position}]",
                                                       reason=box[0], detail=box[1]))
        stat = path.stat()
        keep(Sample(
            item=item, image_path=str(path), source=f"{source}#{image['id']}", boxes=boxes,
            declared_width=_positive_int(image.get("width")),
            declared_height=_positive_int(image.get("height")),
            file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns,
        ))
    reject_unclaimed_images(images_root, listing, claimed, result)
    return result


def _reject_boxes_of(item: str, annotations: list[tuple[int, dict]], reason: str,
                     result: IngestResult) -> None:
    for position, _ in annotations:
        result.rejected_boxes.append(Rejection(item=f"{item}#annotations[{position}]", reason=reason,
                                               detail="its image was quarantined"))


def _positive_int(value: object) -> int | None:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
