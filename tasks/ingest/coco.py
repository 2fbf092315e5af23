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


class CocoUnreadable(ValueError):
    """The COCO file cannot be read at all; it is the whole dataset, so the run stops with this
    one line (naming the file)."""


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
    """Raises CocoUnreadable when the file cannot be parsed (any cause, absurd nesting
    included) or is not a COCO file."""
    result = IngestResult()
    keep = on_sample or result.samples.append
    source = json_path.name
    data = read_coco(json_path)
    categories, ambiguous = read_categories(data.get("categories"))

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
            name, path = find_coco_image(item, images_root, json_path.parent, index)
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
            if _key(ann.get("category_id")) in ambiguous:
                box = "duplicate_id", (f"category id {ann.get('category_id')!r} names "
                                       f"{' and '.join(ambiguous[_key(ann.get('category_id'))])}")
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
            file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns, file_ctime_ns=stat.st_ctime_ns,
        ))
    reject_unclaimed_images(images_root, listing, claimed, result)
    return result


def read_coco(json_path: Path) -> dict:
    try:
        if json_path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        data = json.loads(json_path.read_bytes())
    except RecursionError:
        raise CocoUnreadable(f"{json_path}: nested too deeply to parse") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise CocoUnreadable(f"{json_path}: not readable as JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoUnreadable(f"{json_path}: not a COCO file (no 'images' list at the top level)")
    return data


def read_categories(entries: object) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(id -> name, id -> its names where one id is given different names): the boxes of an
    ambiguous id are quarantined (duplicate_id), never handed one of the names."""
    names: dict[str, list[str]] = {}
    for category in entries if isinstance(entries, list) else []:
        if isinstance(category, dict) and "id" in category and category.get("name"):
            spelled = names.setdefault(_key(category["id"]), [])
            if (name := str(category["name"]).strip()) not in spelled:
                spelled.append(name)
    return ({key: spelled[0] for key, spelled in names.items()},
            {key: spelled for key, spelled in names.items() if len(spelled) > 1})


def find_coco_image(file_name: str, images_root: Path, json_folder: Path,
                    index: dict[str, Path]) -> tuple[str, Path | None]:
    """(the name looked up, the image or None). `file_name` is taken relative to the images
    folder; exports often write it relative to the JSON's folder instead (`images/x.jpg`,
    `../images/x.jpg`): that is found too, when it lands inside the images folder. Raises
    PathOutsideSource for a name that leaves it."""
    candidates = []
    try:
        candidates.append(check_relative_name(file_name))
    except PathOutsideSource:
        pass
    beside_json = (json_folder / file_name.replace("\\", "/")).resolve()
    if beside_json.is_relative_to(images_root.resolve()):
        candidates.append(beside_json.relative_to(images_root.resolve()).as_posix())
    if not candidates:
        raise PathOutsideSource(f"{file_name!r} climbs out of {images_root}")
    for name in candidates:
        if (path := index.get(name.lower())) is not None:
            inside(images_root, path)  # a symlink may still point out
            return name, path
    return candidates[0], None


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
