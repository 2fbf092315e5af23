"""Tiles: windows that cover the image, boxes clipped into them, merged back without duplicates."""

import numpy as np
import pytest

from tasks.core.records import Box
from tasks.images.tiles import boxes_in_window, merge_tile_boxes, tile_windows


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
