"""Tiles for dense images (the SAHI idea): overlapping windows, boxes clipped into them, and the
boxes predicted on tiles merged back onto the whole image.

The windows are laid out as `sahi.slicing.get_slice_bboxes` lays them out (a step of
`size * (1 - overlap)`, the last window pushed back inside the image); the merge is class-wise
NMS from torchvision. sahi itself is not a dependency: it would bring OpenCV and shapely for
these few lines.
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
                     iou: float = 0.5) -> tuple[list[Box], list[float]]:
    """Boxes predicted on tiles, moved onto the whole image; where tiles overlap and two boxes of
    one class overlap by `iou` or more, the more confident one is kept (class-wise NMS)."""
    import torch
    from torchvision.ops import batched_nms

    boxes: list[Box] = []
    scores: list[float] = []
    for (x, y, _, _), tile_boxes, tile_scores in per_tile:
        boxes += [b.model_copy(update={"x1": b.x1 + x, "y1": b.y1 + y, "x2": b.x2 + x,
                                       "y2": b.y2 + y}) for b in tile_boxes]
        scores += tile_scores
    if not boxes:
        return [], []
    classes = {label: n for n, label in enumerate(sorted({b.label for b in boxes}))}
    keep = batched_nms(torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=torch.float64),
                       torch.tensor(scores, dtype=torch.float64),
                       torch.tensor([classes[b.label] for b in boxes]), iou).tolist()
    return [boxes[i] for i in keep], [scores[i] for i in keep]
