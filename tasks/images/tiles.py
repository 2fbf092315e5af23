"""Tiles for dense images (the SAHI idea): overlapping windows, boxes clipped into them, and the
boxes predicted on tiles merged back onto the whole image.

The windows are laid out as `sahi.slicing.get_slice_bboxes` lays them out (a step of
`size * (1 - overlap)`, the last window pushed back inside the image). Merging is not SAHI's:
its GREEDYNMM postprocess unites boxes whose intersection over the smaller is >= 0.5, but a
defect wider than the tiles' overlap is seen by two tiles as two clipped pieces that share only
the overlap band (a 400 px defect on 512 px tiles with 0.2 overlap: pieces of 212 and 290 px
sharing 102, 0.48 of the smaller), so they stay two boxes, neither of which matches the defect
(IoU 0.53 and 0.73). `merge_tile_boxes` first joins the pieces of a defect cut by the tiles'
inner edges (seams), using where the tiles were cut, then removes duplicates. sahi itself is not
a dependency: it would bring OpenCV and shapely for these few lines.
"""

from __future__ import annotations

from tasks.core.records import Box

Window = tuple[int, int, int, int]  # x, y, width, height
Coords = tuple[float, float, float, float]  # x1, y1, x2, y2 on the whole image

# A predicted box "touches" a tile's edge within this share of the tile's side. Florence-2 writes
# coordinates as 1000 loc tokens per tile side, decoded to bin centres, so a box cut exactly at
# the edge comes back half a bin inside it; two bins also absorb a bin of the model's own error.
LOC_BINS = 1000  # as tasks/dataset/loc_tokens.py codes them
EDGE_TOLERANCE = 2 / LOC_BINS


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
                     threshold: float = 0.5, edge_tolerance: float = EDGE_TOLERANCE
                     ) -> tuple[list[Box], list[float]]:
    """Boxes predicted on tiles, moved onto the whole image, one box per defect.

    1. Join the pieces of a defect cut by seams: a box that touches an inner edge of its tile
       (an edge inside the image, whose extent is the windows'; touching within
       `edge_tolerance` of the tile's side) is joined with every same-class box of another
       tile that reaches that edge and goes on past it, when the two overlap along the edge by
       at least half the shorter of their sides there (two defects side by side along a seam
       stay apart). Joins chain (union-find), so a defect over 3 tiles in a row or over a 2x2
       corner becomes one box: the union of its pieces, with the score of its most confident
       piece (and that piece's label and flags).
    2. Remove duplicates (a defect seen whole by two tiles): greedily, most confident (then
       largest) first, a box is dropped when a kept box of its class covers `threshold` of the
       smaller of the two (intersection over smaller, SAHI's match metric).

    Scores are returned in the boxes' order; an empty input gives ([], [])."""
    pieces: list[tuple[Coords, Window, Box, float]] = []
    for window, tile_boxes, tile_scores in per_tile:
        x, y, _, _ = window
        pieces += [((b.x1 + x, b.y1 + y, b.x2 + x, b.y2 + y), window, b, s)
                   for b, s in zip(tile_boxes, tile_scores, strict=True)]
    extent = (max((x + w for (x, _, w, _), _, _ in per_tile), default=0),
              max((y + h for (_, y, _, h), _, _ in per_tile), default=0))
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (coords, window, box, _) in enumerate(pieces):
        for axis, side, seam, tolerance in _inner_cuts(coords, window, extent, edge_tolerance):
            for j, (other, other_window, other_box, _) in enumerate(pieces):
                if (other_box.label == box.label and other_window != window
                        and _across(coords, other, axis, side, seam, tolerance)):
                    parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(root(i), []).append(i)
    boxes, scores = [], []
    for members in groups.values():
        best = max(members, key=lambda i: pieces[i][3])
        corners = [pieces[i][0] for i in members]
        boxes.append(pieces[best][2].model_copy(update={
            "x1": min(c[0] for c in corners), "y1": min(c[1] for c in corners),
            "x2": max(c[2] for c in corners), "y2": max(c[3] for c in corners)}))
        scores.append(pieces[best][3])
    return _suppress(boxes, scores, threshold)


def _inner_cuts(coords: Coords, window: Window, extent: tuple[int, int], edge_tolerance: float
                ) -> list[tuple[int, int, float, float]]:
    """(axis 0 = x / 1 = y, side -1 = low / +1 = high, seam, tolerance in px) for each inner
    edge of `window` that the box touches."""
    cuts = []
    for axis in (0, 1):
        start, side_length = window[axis], window[axis + 2]
        tolerance = edge_tolerance * side_length
        if start > 0 and coords[axis] <= start + tolerance:
            cuts.append((axis, -1, float(start), tolerance))
        end = start + side_length
        if end < extent[axis] and coords[axis + 2] >= end - tolerance:
            cuts.append((axis, 1, float(end), tolerance))
    return cuts


def _across(cut: Coords, other: Coords, axis: int, side: int, seam: float,
            tolerance: float) -> bool:
    """Does `other` carry the box `cut` (cut at `seam`) on across the seam: reaching the seam,
    going past it, and overlapping `cut` along the seam by half the smaller of the two?"""
    low, high = other[axis], other[axis + 2]
    if side > 0 and not (low <= seam + tolerance < high):
        return False
    if side < 0 and not (low < seam - tolerance <= high):
        return False
    along = 1 - axis
    shared = min(cut[along + 2], other[along + 2]) - max(cut[along], other[along])
    smaller = min(cut[along + 2] - cut[along], other[along + 2] - other[along])
    return shared > 0 and shared >= 0.5 * smaller


def _suppress(boxes: list[Box], scores: list[float],
              threshold: float) -> tuple[list[Box], list[float]]:
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
