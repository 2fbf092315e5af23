"""Tiles: windows that cover the image, boxes clipped into them, merged back without duplicates."""

import numpy as np
import pytest

from tasks.core.records import Box
from tasks.dataset.loc_tokens import decode_box, encode_box
from tasks.images.tiles import Window, boxes_in_window, merge_tile_boxes, tile_windows
from tasks.scoring.coco import (
    coco_detections,
    coco_evaluate,
    coco_ground_truth,
    dense_max_dets,
    iou,
)


@pytest.mark.parametrize("width, height, size, overlap", [
    (400, 400, 128, 0.2), (1000, 300, 256, 0.25), (100, 80, 128, 0.2), (129, 500, 128, 0.0)])
def test_windows_cover_every_pixel_stay_inside_and_overlap(width, height, size, overlap):
    windows = tile_windows(width, height, size, overlap)
    covered = np.zeros((height, width), dtype=int)
    for x, y, w, h in windows:
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert (w, h) == (min(size, width), min(size, height))
        covered[y:y + h, x:x + w] += 1
    assert covered.min() >= 1
    if overlap and width > size:
        assert covered.max() >= 2  # neighbours share a band


def test_a_box_cut_by_a_tile_edge_is_clipped_and_kept_only_when_enough_of_it_shows():
    boxes = [Box(x1=10, y1=10, x2=30, y2=30, label="a"),    # inside
             Box(x1=90, y1=10, x2=110, y2=30, label="b"),   # half inside
             Box(x1=95, y1=40, x2=115, y2=60, label="c")]   # a quarter inside
    seen = boxes_in_window(boxes, (0, 0, 100, 100), min_visible=0.5, min_size=1)
    assert [(b.label, b.x1, b.x2, b.truncated) for b in seen] == [
        ("a", 10, 30, False), ("b", 90, 100, True)]
    shifted = boxes_in_window(boxes, (80, 0, 100, 100), min_visible=0.5, min_size=1)
    assert [(b.label, b.x1, b.y1) for b in shifted] == [("b", 10, 10), ("c", 15, 40)]


def test_boxes_found_twice_in_overlapping_tiles_are_merged_and_other_classes_kept():
    windows = [(0, 0, 100, 100), (80, 0, 100, 100)]
    left = [Box(x1=85, y1=10, x2=95, y2=20, label="spot")]
    right = [Box(x1=5.5, y1=10, x2=15.5, y2=20, label="spot"),   # the same spot, seen again
             Box(x1=5, y1=10, x2=15, y2=20, label="scratch")]   # another class, same place
    boxes, scores = merge_tile_boxes([(windows[0], left, [0.9]), (windows[1], right, [0.6, 0.5])])
    assert sorted((b.label, b.x1, s) for b, s in zip(boxes, scores, strict=True)) == [
        ("scratch", 85, 0.5), ("spot", 85, 0.9)]
    assert merge_tile_boxes([(windows[0], [], [])]) == ([], [])


# A tile model that answers perfectly: each tile sees what of each defect lies inside it, however
# little, and writes it on its loc-token grid (1000 bins per tile side) decoded to bin centres,
# as the real decoder does. Tiles of 512 px overlapping by 0.2 (103 px), defects wider than that.
SIZE, OVERLAP, LABEL = 512, 0.2, "scratch"


def perfect_tiles(truth: list[Box], width: int, height: int
                  ) -> list[tuple[Window, list[Box], list[float]]]:
    per_tile = []
    for window in tile_windows(width, height, SIZE, OVERLAP):
        _, _, w, h = window
        seen = [decode_box(encode_box(b, w, h), w, h, b.label)
                for b in boxes_in_window(truth, window, min_visible=1e-6, min_size=1)]
        per_tile.append((window, seen, [0.9] * len(seen)))
    return per_tile


def merged_map75(images: list[tuple[int, int, list[Box]]]) -> tuple[float, int]:
    """COCO mAP75 of the merged tile boxes over all `images` (width, height, truth), as
    tasks/scoring/score.py evaluates, and how many boxes came back."""
    merged = [merge_tile_boxes(perfect_tiles(truth, w, h)) for w, h, truth in images]
    gt = coco_ground_truth([(f"{n}", w, h, truth) for n, (w, h, truth) in enumerate(images)],
                           [LABEL])
    dt = coco_detections([(n + 1, boxes, scores) for n, (boxes, scores) in enumerate(merged)],
                         [LABEL])
    return coco_evaluate(gt, dt, max_dets=dense_max_dets(gt))["map75"], sum(
        len(boxes) for boxes, _ in merged)


def bar(x: float, y: float, w: float, h: float) -> Box:
    return Box(x1=x, y1=y, x2=x + w, y2=y + h, label=LABEL)


@pytest.mark.parametrize("length", [250, 400, 700])  # 700 px: over 3 tiles in a row
def test_a_defect_wider_than_the_overlap_is_one_box_wherever_it_crosses_a_seam(length):
    # 3 tiles by 3 (1330 px): every position of the defect in steps of 1 px along x, then y.
    side = SIZE + 2 * int(SIZE * (1 - OVERLAP))
    along_x = [(side, side, [bar(x, 600, length, 40)]) for x in range(side - length + 1)]
    along_y = [(side, side, [bar(600, y, 40, length)]) for y in range(side - length + 1)]
    map75, count = merged_map75(along_x + along_y)
    assert count == len(along_x) + len(along_y)
    assert map75 >= 0.95


def test_a_defect_over_a_tile_corner_is_one_box_wherever_it_lies():
    # 2 tiles by 2 (921 px): a 400 px square at every offset in steps of 5 px along x and y.
    side = SIZE + int(SIZE * (1 - OVERLAP))
    images = [(side, side, [bar(x, y, 400, 400)])
              for x in range(0, side - 400 + 1, 5) for y in range(0, side - 400 + 1, 5)]
    map75, count = merged_map75(images)
    assert count == len(images)
    assert map75 >= 0.95


@pytest.mark.parametrize("truth", [
    [bar(300, 300, 700, 60)],                      # over 3 tiles in a row
    [bar(300, 300, 400, 400)],                     # over the corner of 4 tiles
    [bar(300, 300, 170, 60), bar(480, 300, 220, 60)],   # side by side, at the seam at x 512
    [bar(300, 100, 400, 40), bar(300, 150, 400, 40)],   # one above the other, both across it
    [bar(200, 490, 400, 30), bar(420, 530, 400, 30)],   # 10 px apart in y, both across x 409..512
])
def test_pieces_of_one_defect_become_one_box_and_separate_defects_stay_apart(truth):
    boxes, scores = merge_tile_boxes(perfect_tiles(truth, 1330, 1330))
    assert len(boxes) == len(truth) and scores == [0.9] * len(truth)
    for true_box in truth:
        assert max(iou(true_box, box) for box in boxes) > 0.95
