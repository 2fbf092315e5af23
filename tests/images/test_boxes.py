"""Box conventions, flips, EXIF orientation and clipping."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageOps

from tasks.core.records import Box, coco_to_box, voc_to_box
from tasks.images.boxes import fit_boxes, hflip, orient, vflip


def test_voc_corners_are_one_based_inclusive():
    # A box covering pixel columns 0..9 (ten pixels) is written by LabelImg as xmin=1, xmax=10.
    box = voc_to_box(1, 1, 10, 20, "a")
    assert (box.x1, box.y1, box.x2, box.y2) == (0, 0, 10, 20)
    assert box.width == 10 and box.height == 20


def test_voc_box_reaching_the_last_pixel_ends_at_the_image_edge():
    # NEU-DET: 200x200 images with xmax = 200 -> x2 = 200, the exclusive right edge.
    assert voc_to_box(2, 2, 200, 200, "a").x2 == 200


def test_coco_boxes_are_zero_based_x_y_w_h():
    box = coco_to_box(491.0, 1035.0, 153.0, 182.0, "human")
    assert (box.x1, box.y1, box.x2, box.y2) == (491.0, 1035.0, 644.0, 1217.0)


@st.composite
def box_in_image(draw):
    width = draw(st.integers(1, 5000))
    height = draw(st.integers(1, 5000))
    x1 = draw(st.floats(0, width - 1e-3))
    y1 = draw(st.floats(0, height - 1e-3))
    x2 = draw(st.floats(x1, width))
    y2 = draw(st.floats(y1, height))
    return Box(x1=x1, y1=y1, x2=x2, y2=y2, label="d"), width, height


def corners(box: Box) -> tuple[float, float, float, float]:
    return box.x1, box.y1, box.x2, box.y2


@given(box_in_image())
def test_flip_twice_is_identity(case):
    box, width, height = case
    # Exact for the pixel values annotations hold; within float rounding for any float.
    assert corners(hflip(hflip(box, width), width)) == pytest.approx(corners(box), abs=1e-9)
    assert corners(vflip(vflip(box, height), height)) == pytest.approx(corners(box), abs=1e-9)
    assert hflip(hflip(box, width), width).label == box.label


@given(st.integers(1, 4000), st.integers(0, 3999), st.integers(1, 4000))
def test_flip_twice_is_exact_on_pixel_corners(width, x1, w):
    box = Box(x1=min(x1, width - 1), y1=0, x2=min(x1 + w, width), y2=1, label="d")
    assert hflip(hflip(box, width), width) == box


@given(box_in_image())
def test_hflip_mirrors_exactly(case):
    box, width, _ = case
    flipped = hflip(box, width)
    assert flipped.x1 == width - box.x2 and flipped.x2 == width - box.x1
    assert (flipped.y1, flipped.y2) == (box.y1, box.y2)
    assert 0 <= flipped.x1 <= flipped.x2 <= width


def _exif_image(orientation: int, size=(40, 24), rect=(5, 3, 12, 9)) -> Image.Image:
    image = Image.new("L", size, 0)
    image.paste(255, rect)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_orient_moves_boxes_exactly_as_exif_transpose_moves_pixels():
    for orientation in range(1, 9):
        image = _exif_image(orientation)
        shown = ImageOps.exif_transpose(image)
        box = orient(Box(x1=5, y1=3, x2=12, y2=9, label="a"), orientation, 40, 24)
        assert shown.getbbox() == (box.x1, box.y1, box.x2, box.y2), orientation


def test_fit_boxes_clips_counts_and_names_what_it_drops():
    boxes = [
        Box(x1=-5, y1=10, x2=20, y2=30, label="partly-left"),
        Box(x1=90, y1=90, x2=130, y2=130, label="partly-corner"),
        Box(x1=150, y1=10, x2=170, y2=30, label="outside"),
        Box(x1=99.5, y1=10, x2=120, y2=30, label="sliver"),
        Box(x1=10, y1=10, x2=20, y2=20, label="inside"),
    ]
    kept, rejected, clipped = fit_boxes(boxes, "img.xml", 100, 100, min_size=1.0)
    assert [b.label for b in kept] == ["partly-left", "partly-corner", "inside"]
    assert (kept[0].x1, kept[1].x2, kept[1].y2) == (0, 100, 100)
    assert clipped == 3  # the sliver was clipped too, then dropped as too small
    assert {(r.item, r.reason) for r in rejected} == {
        ("img.xml#2", "box_outside_image"), ("img.xml#3", "box_too_small")}
