"""Boxes -> a Pascal VOC XML exactly as LabelImg writes it, so LabelImg opens the folder and a
person only corrects: `<filename>` with its extension, `<path>`, `<size>` with `<depth>`,
`<segmented>`, and per object `<pose>`, `<truncated>` (1 where the box touches the image edge,
as LabelImg sets it), `<difficult>` and 1-based integer corners. Tab-indented like LabelImg's
lxml pretty print. The reader (`voc.py`) turns these back into the same boxes, to the pixel.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement, indent, tostring

from tasks.core.records import Box


def voc_corners(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Our 0-based, exclusive-edge float box -> VOC's 1-based inclusive integer corners, inside
    the image and at least one pixel wide (VOC cannot say less)."""
    xmin = min(max(round(box.x1) + 1, 1), width)
    ymin = min(max(round(box.y1) + 1, 1), height)
    xmax = min(max(round(box.x2), xmin), width)
    ymax = min(max(round(box.y2), ymin), height)
    return xmin, ymin, xmax, ymax


def _add(parent: Element, tag: str, text: object) -> Element:
    child = SubElement(parent, tag)
    child.text = str(text)
    return child


def labelimg_xml(image_path: str | Path, width: int, height: int, depth: int,
                 boxes: list[Box], verified: bool | None = None) -> bytes:
    """The XML LabelImg would save for `image_path` with these boxes. `verified`: LabelImg's
    "Verify Image" mark (`<annotation verified="yes">`); False writes `verified="no"`, what a
    model's guess is until a person checks it and LabelImg saves it marked; None: no mark."""
    image_path = Path(image_path)
    root = Element("annotation")
    if verified is not None:
        root.set("verified", "yes" if verified else "no")
    _add(root, "folder", image_path.parent.name)
    _add(root, "filename", image_path.name)
    _add(root, "path", str(image_path))
    _add(SubElement(root, "source"), "database", "Unknown")
    size = SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", depth)):
        _add(size, tag, value)
    _add(root, "segmented", 0)
    for box in boxes:
        xmin, ymin, xmax, ymax = voc_corners(box, width, height)
        obj = SubElement(root, "object")
        _add(obj, "name", box.label)
        _add(obj, "pose", "Unspecified")
        touches_edge = xmin == 1 or ymin == 1 or xmax == width or ymax == height
        _add(obj, "truncated", int(box.truncated or touches_edge))
        _add(obj, "difficult", int(box.difficult))
        bndbox = SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            _add(bndbox, tag, value)
    indent(root, space="\t")
    # No `<?xml ...?>` line: LabelImg (lxml, UTF-8) writes none either.
    return (tostring(root, encoding="unicode") + "\n").encode("utf-8")


def save_xml(path: Path, content: bytes, overwrite: bool = False) -> bool:
    """Write `content` to `path` whole: a kill never leaves half an XML that would then pass for
    a person's. An XML already there (a person's corrections) is kept unless `overwrite`: the
    new file appears by a hard link, which fails when one exists, so not even LabelImg saving
    in the same moment loses its file. True when written, False when an existing one was kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    partial.write_bytes(content)
    try:
        if overwrite:
            partial.replace(path)
            return True
        try:
            os.link(partial, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create it exclusively instead
            try:
                with open(path, "xb") as handle:
                    handle.write(content)
            except FileExistsError:
                return False
        return True
    finally:
        partial.unlink(missing_ok=True)
