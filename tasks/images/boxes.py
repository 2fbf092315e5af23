"""Box geometry: EXIF orientation, flips, clipping. Boxes are 0-based with exclusive x2/y2."""

from __future__ import annotations

from tasks.core.records import Box, Rejection


def hflip(box: Box, width: float) -> Box:
    return box.model_copy(update={"x1": width - box.x2, "x2": width - box.x1})


def vflip(box: Box, height: float) -> Box:
    return box.model_copy(update={"y1": height - box.y2, "y2": height - box.y1})


def _transpose(box: Box) -> Box:
    return box.model_copy(update={"x1": box.y1, "y1": box.x1, "x2": box.y2, "y2": box.x2})


def orient(box: Box, orientation: int, raw_width: float, raw_height: float) -> Box:
    """Map a box drawn on the stored pixels to the image as `ImageOps.exif_transpose` shows it."""
    w, h = raw_width, raw_height
    if orientation == 2:
        return hflip(box, w)
    if orientation == 3:
        return vflip(hflip(box, w), h)
    if orientation == 4:
        return vflip(box, h)
    if orientation == 5:  # transpose
        return _transpose(box)
    if orientation == 6:  # rotate 270 (clockwise): (x, y) -> (h - y, x)
        return hflip(_transpose(box), h)
    if orientation == 7:  # transverse: (x, y) -> (h - y, w - x)
        return vflip(hflip(_transpose(box), h), w)
    if orientation == 8:  # rotate 90 (counter-clockwise): (x, y) -> (y, w - x)
        return vflip(_transpose(box), w)
    return box


def fit_boxes(
    boxes: list[Box], item: str, width: int, height: int, min_size: float
) -> tuple[list[Box], list[Rejection], int]:
    """Clip boxes to the image. Returns (kept, rejected, number clipped)."""
    kept: list[Box] = []
    rejected: list[Rejection] = []
    clipped = 0
    for number, box in enumerate(boxes):
        where = f"{item}#{number}"
        if box.x2 <= 0 or box.y2 <= 0 or box.x1 >= width or box.y1 >= height:
            rejected.append(Rejection(item=where, reason="box_outside_image",
                                      detail=f"({box.x1:g},{box.y1:g},{box.x2:g},{box.y2:g}) "
                                      f"misses the {width}x{height} image"))
            continue
        inside_box = box.model_copy(update={
            "x1": max(0.0, box.x1), "y1": max(0.0, box.y1),
            "x2": min(float(width), box.x2), "y2": min(float(height), box.y2),
        })
        if inside_box != box:
            clipped += 1
        if inside_box.width < min_size or inside_box.height < min_size:
            rejected.append(Rejection(item=where, reason="box_too_small",
                                      detail=f"{inside_box.width:g}x{inside_box.height:g} px "
                                      f"after clipping, under {min_size:g}"))
            continue
        kept.append(inside_box)
    return kept, rejected, clipped
