"""Tiles for dense images (the SAHI idea): overlapping windows, boxes clipped into them, and the
boxes predicted on tiles merged back onto the whole image.

The windows are laid out as `sahi.slicing.get_slice_bboxes` lays them out (a step of
`size * (1 - overlap)`, the last window pushed back inside the image) and boxes are merged as
SAHI's postprocessing does by default (greedy, intersection over the smaller box >= 0.5). sahi
itself is not a dependency: it would bring OpenCV and shapely for these few lines.
"""

from __future__ import annotations

from tasks.core.records import Box

Window = tuple[int, int, int, int]  # x, y, width, height


def _starts(length: int, size: int, step: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def tile_windows(width: int, height: int, size: int, overlap: float) -> list[Window]:
    """Windows of `size` px (smaller only where the image is) covering the image, neighbours
    overlapping by `overlap` of a side, in reading order."""
    step = max(1, int(size * (1 - overlap)))
    return [(x, y, min(size, width), min(size, height))
            for y in _starts(height, size, step) for x in _starts(width, size, step)]


def boxes_in_window(boxes: list[Box], window: Window, min_visible: float,
                    min_size: float) -> list[Box]:
    """The boxes seen through `window`, in its coordinates: clipped to it, kept when at least
    `min_visible` of the box's area is inside and the clipped box is at least `min_size` px."""
    x, y, w, h = window
    seen = []
    for box in boxes:
        x1, y1 = max(box.x1, x), max(box.y1, y)
        x2, y2 = min(box.x2, x + w), min(box.y2, y + h)
        if x2 - x1 < min_size or y2 - y1 < min_size:
            continue
        if (x2 - x1) * (y2 - y1) < min_visible * box.width * box.height:
            continue
        cut = (x1, y1, x2, y2) != (box.x1, box.y1, box.x2, box.y2)
        seen.append(box.model_copy(update={"x1": x1 - x, "y1": y1 - y, "x2": x2 - x, "y2": y2 - y,
                                           "truncated": box.truncated or cut}))
    return seen


def merge_tile_boxes(per_tile: list[tuple[Window, list[Box], list[float]]],
                     threshold: float = 0.5) -> tuple[list[Box], list[float]]:
    """Boxes predicted on tiles, moved onto the whole image and merged: greedily, most confident
    (then largest) first, a box is dropped when a kept box of its class covers `threshold` of
    the smaller of the two (intersection over smaller, SAHI's default match metric: a defect cut
    by one tile's edge lies inside the whole box another tile saw, whatever their IoU)."""
    boxes: list[Box] = []
    scores: list[float] = []
    for (x, y, _, _), tile_boxes, tile_scores in per_tile:
        boxes += [b.model_copy(update={"x1": b.x1 + x, "y1": b.y1 + y, "x2": b.x2 + x,
                                       "y2": b.y2 + y}) for b in tile_boxes]
        scores += tile_scores
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], -boxes[i].width * boxes[i].height))
    kept: list[int] = []
    for i in order:
        if not any(boxes[k].label == boxes[i].label
                   and _over_smaller(boxes[k], boxes[i]) >= threshold for k in kept):
            kept.append(i)
    return [boxes[i] for i in kept], [scores[i] for i in kept]


def _over_smaller(a: Box, b: Box) -> float:
    width = min(a.x2, b.x2) - max(a.x1, b.x1)
    height = min(a.y2, b.y2) - max(a.y1, b.y1)
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min(a.width * a.height, b.width * b.height)
    return width * height / smaller if smaller > 0 else 0.0
