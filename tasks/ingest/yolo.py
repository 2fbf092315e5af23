"""LabelImg's YOLO format -> Samples + Rejections: one `.txt` per image (matched by stem), a line
`class_id x_center y_center width height` per box, normalised to [0, 1] by the image's size, and
`classes.txt` naming the ids (line n is class n), or the config's `labels` in that order.

Boxes become the one record type with VOC's conventions (0-based, exclusive right and bottom
edges): x1 = (x_center - width / 2) * image width. (LabelImg's own YOLO export writes a VOC box's
width as xmax - xmin, one pixel less than VOC means, so its YOLO and VOC saves of one box differ
by a pixel at the left and top; defectflow reads each format as written.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from tasks.core.labels import ANY_LABEL, LabelRules
from tasks.core.records import Box, Rejection, Sample, box_rejections
from tasks.ingest.results import IngestResult, reject_unclaimed_images
from tasks.ingest.sources import PathOutsideSource, SourceListing, find_image, index_images, inside

CLASSES_FILE = "classes.txt"
MAX_TXT_BYTES = 10_000_000


def read_text(path: Path, root: Path) -> str:
    """The file's text. Raises PathOutsideSource (a link out), ValueError (too large, not UTF-8)."""
    inside(root, path)
    if path.stat().st_size > MAX_TXT_BYTES:
        raise ValueError(f"larger than {MAX_TXT_BYTES} bytes")
    return path.read_bytes().decode("utf-8-sig")


def read_classes(root: Path, labels: list[str] | None) -> list[str] | None:
    """classes.txt's names (blank lines skipped), else the config's labels, else None."""
    path = root / CLASSES_FILE
    if path.is_file():
        return [line.strip() for line in read_text(path, root).splitlines() if line.strip()]
    return list(labels) if labels else None


def yolo_line_to_box(line: str, classes: list[str], width: int, height: int,
                     rules: LabelRules) -> Box | tuple[str, str]:
    """One line -> a Box in pixels, or (reason, detail)."""
    parts = line.split()
    if len(parts) != 5:
        return "yolo_line_malformed", f"expected 'class x_center y_center width height': {line!r}"
    try:
        class_id = int(parts[0])
        cx, cy, w, h = (float(v) for v in parts[1:])
    except ValueError:
        return "yolo_line_malformed", f"not a class id and four numbers: {line!r}"
    if not 0 <= class_id < len(classes):
        return "class_id_out_of_range", f"class {class_id}, {CLASSES_FILE} names 0..{len(classes) - 1}"
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        return "yolo_line_malformed", f"non-finite values: {line!r}"
    edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if not all(0 <= v <= 1 for v in (cx, cy, w, h)) or not all(-1e-6 <= e <= 1 + 1e-6 for e in edges):
        return "yolo_coords_out_of_range", f"normalised values must lie in [0, 1]: {line!r}"
    if w == 0 or h == 0:
        return "box_degenerate", f"zero area: {line!r}"
    label = rules.resolve(classes[class_id])
    if isinstance(label, tuple):
        return label
    x1, y1, x2, y2 = (min(max(e, 0.0), 1.0) for e in edges)
    return Box(x1=x1 * width, y1=y1 * height, x2=x2 * width, y2=y2 * height, label=label)


def ingest_yolo(
    images_root: Path,
    annotations_root: Path,
    listing: SourceListing,
    labels: list[str] | None = None,
    rules: LabelRules = ANY_LABEL,
    on_sample: Callable[[Sample], None] | None = None,
) -> IngestResult:
    """Every .txt becomes a Sample or a Rejection; every image no .txt claims is rejected too.
    An empty .txt is an image without defects."""
    result = IngestResult()
    keep = on_sample or result.samples.append
    index = index_images(images_root, listing.images)
    try:
        classes = read_classes(annotations_root, labels)
    except (PathOutsideSource, ValueError, OSError) as exc:
        classes, problem = None, f"{CLASSES_FILE} cannot be read: {exc}"
    else:
        problem = f"no {CLASSES_FILE} in {annotations_root} and no `labels` in the config"
    claimed: set[Path] = set()
    for txt in sorted(p for p in listing.annotations if p.name != CLASSES_FILE):
        item = txt.relative_to(annotations_root).as_posix()
        rel_folder = PurePosixPath(item).parent.as_posix().lstrip(".")
        image = find_image(None, rel_folder, txt.stem, index)
        if image is not None:
            claimed.add(image)  # whatever happens next, its fate is this file's
        try:
            text = read_text(txt, annotations_root)
            if image is not None:
                inside(images_root, image)
        except PathOutsideSource as exc:
            result.rejected.append(Rejection(item=item, reason="path_outside_source", detail=str(exc)))
            continue
        except (ValueError, OSError) as exc:
            result.rejected.append(Rejection(item=item, reason="annotation_malformed", detail=str(exc)))
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        result.boxes_found += len(lines)
        size = _image_size(image) if image is not None else None
        if classes is None or image is None or isinstance(size[0], str):
            reason, detail = (("classes_missing", problem) if classes is None else
                              ("image_missing", f"no image named {txt.stem}.* under {images_root}")
                              if image is None else size)
            result.rejected.append(Rejection(item=item, reason=reason, detail=detail))
            result.rejected_boxes += box_rejections(item, len(lines), "image_rejected", reason)
            continue
        boxes = []
        for number, line in enumerate(lines):
            box = yolo_line_to_box(line, classes, *size, rules)
            if isinstance(box, Box) or box[0] not in ("yolo_line_malformed", "class_id_out_of_range"):
                result.spellings[classes[int(line.split()[0])]] += 1  # a valid class id
            if isinstance(box, Box):
                boxes.append(box)
            else:
                result.rejected_boxes.append(Rejection(item=f"{item}#{number}", reason=box[0],
                                                       detail=box[1]))
        stat = image.stat()
        keep(Sample(item=item, image_path=str(image), source=str(txt), boxes=boxes,
                    declared_width=size[0], declared_height=size[1],
                    file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns,
                    file_ctime_ns=stat.st_ctime_ns))
    reject_unclaimed_images(images_root, listing, claimed, result)
    return result


def _image_size(path: Path) -> tuple[int, int] | tuple[str, str]:
    """(width, height) from the header, as stored (LabelImg normalises by it), or (reason,
    detail). Nothing is decoded here: the image step checks the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except Image.DecompressionBombError as exc:
        return "image_too_large", str(exc)
    except UnidentifiedImageError as exc:
        return "not_an_image", str(exc)
    except Exception as exc:  # noqa: BLE001 - any unreadable header is this image's reason
        return "image_unreadable", f"{type(exc).__name__}: {exc}"
