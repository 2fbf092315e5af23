"""Decoding safely, grayscale detection, EXIF, the content store."""

import io
from pathlib import Path

import pytest
from PIL import Image

from tasks.images.grayscale import is_grayscale, to_rgb
from tasks.images.store import ContentStore, derived_image, inspect_and_decode, inspect_bytes, output_op


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gray_palette_image() -> Image.Image:
    image = Image.new("P", (8, 8))
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.putdata([i * 3 for i in range(64)])
    return image


def colour_palette_image() -> Image.Image:
    image = Image.new("P", (8, 8))
    image.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    image.putdata([i * 3 for i in range(64)])
    return image


@pytest.mark.parametrize(("image", "gray"), [
    (Image.new("L", (8, 8), 50), True),
    (Image.new("LA", (8, 8), (50, 255)), True),
    (Image.new("I", (8, 8), 5000), True),
    (Image.new("I;16", (8, 8), 5000), True),
    (gray_palette_image(), True),
    (colour_palette_image(), False),
    (Image.new("RGB", (8, 8), (90, 90, 90)), True),
    (Image.new("RGBA", (8, 8), (90, 90, 90, 10)), True),
    (Image.new("RGB", (8, 8), (90, 91, 90)), True),  # within the JPEG tolerance
    (Image.new("RGB", (8, 8), (90, 120, 90)), False),
    (Image.new("CMYK", (8, 8), (10, 200, 30, 0)), False),
])
def test_grayscale_detection(image, gray):
    assert is_grayscale(image, tolerance=2) is gray


def test_to_rgb_scales_16_bit_instead_of_clipping():
    image = Image.new("I;16", (4, 1))
    image.putdata([0, 1000, 30000, 65535])
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    values = [rgb.getpixel((x, 0))[0] for x in range(4)]
    assert values[0] == 0 and values[-1] == 255 and values[1] < values[2] < values[3]


def test_to_rgb_puts_transparent_pixels_on_white():
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied_before_measuring():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    inspection = inspect_bytes(encoded(image, "JPEG", exif=exif), "sha", 10**8, 2)
    assert inspection.ok and inspection.orientation == 6
    assert (inspection.raw_width, inspection.raw_height) == (40, 20)
    assert (inspection.width, inspection.height) == (20, 40)
    assert output_op(inspection, "convert") == "orient"


def test_decompression_bomb_is_refused_before_decoding():
    # Small files that declare 64 MP (under Pillow's own guard: ours refuses it) and 900 MP.
    for side in (8000, 30000):
        data = encoded(Image.new("1", (side, side)))
        assert len(data) < 200_000
        inspection = inspect_bytes(data, "sha", max_pixels=50_000_000, gray_tolerance=2)
        assert not inspection.ok and inspection.reason == "image_too_large"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not_an_image"),
    (b"this is a text file", "not_an_image"),
    (encoded(Image.new("RGB", (64, 64), 9), "JPEG")[:300], "image_unreadable"),
])
def test_unreadable_bytes_get_a_reason(data, reason):
    inspection = inspect_bytes(data, "sha", 10**8, 2)
    assert not inspection.ok and inspection.reason == reason


def test_inspection_and_renders_are_memoized_by_content(tmp_path: Path):
    store = ContentStore(tmp_path / "store")
    path = tmp_path / "a.png"
    path.write_bytes(encoded(Image.new("L", (16, 8), 7)))
    first, reused_first = inspect_and_decode(path, store, 10**8, 2)[:2]
    second, reused_second = inspect_and_decode(path, store, 10**8, 2)[:2]
    assert (reused_first, reused_second) == (False, True) and first == second
    copy = tmp_path / "b.png"
    copy.write_bytes(path.read_bytes())  # same bytes under another name: still known
    assert inspect_and_decode(copy, store, 10**8, 2)[1] is True
    out, reused = derived_image(path, first.sha256, "rgb+hflip", first.format, 10**8, store)
    assert not reused and Image.open(out).mode == "RGB"
    assert derived_image(path, first.sha256, "rgb+hflip", first.format, 10**8, store) == (out, True)


def test_output_op_per_policy():
    gray = inspect_bytes(encoded(Image.new("L", (4, 4))), "s", 10**8, 2)
    colour_rgba = inspect_bytes(encoded(Image.new("RGBA", (4, 4), (1, 200, 3, 255))), "s", 10**8, 2)
    rgb_png = inspect_bytes(encoded(Image.new("RGB", (4, 4), (1, 200, 3))), "s", 10**8, 2)
    bmp = inspect_bytes(encoded(Image.new("RGB", (4, 4), (1, 200, 3)), "BMP"), "s", 10**8, 2)
    assert output_op(gray, "convert") == "rgb"
    assert output_op(gray, "keep") is None
    assert output_op(colour_rgba, "drop") == "rgb"
    assert output_op(rgb_png, "drop") is None  # the source bytes are used as they are
    assert output_op(bmp, "drop") == "png"


def test_the_memo_is_keyed_by_the_settings_that_shape_its_verdict(tmp_path: Path):
    store = ContentStore(tmp_path / "store")
    path = tmp_path / "almost_gray.png"
    # R, G and B three units apart: gray at tolerance 5, colour at tolerance 2.
    path.write_bytes(encoded(Image.new("RGB", (40, 40), (100, 103, 106))))
    assert inspect_and_decode(path, store, 100, 2)[0].reason == "image_too_large"
    bigger, reused = inspect_and_decode(path, store, 10**8, 2)[:2]
    assert bigger.ok and not reused  # raising max_pixels is a new verdict, not the old one
    assert bigger.grayscale is False
    tolerant, reused = inspect_and_decode(path, store, 10**8, 5)[:2]
    assert tolerant.grayscale is True and not reused
    assert inspect_and_decode(path, store, 10**8, 5)[:2] == (tolerant, True)


def test_a_pillow_value_error_is_unreadable_not_too_large(monkeypatch):
    # Pillow raises ValueError for some corrupt files ("tile cannot extend outside image").
    def broken_load(self):
        raise ValueError("tile cannot extend outside image")

    data = encoded(Image.new("RGB", (8, 8), 9), "PNG")
    monkeypatch.setattr(Image.Image, "load", broken_load)
    inspection = inspect_bytes(data, "sha", 10**8, 2)
    assert not inspection.ok and inspection.reason == "image_unreadable"
    assert "tile cannot extend" in inspection.detail


def test_a_store_folder_removed_while_the_process_runs_is_made_again(tmp_path):
    import shutil

    store = ContentStore(tmp_path / "store")
    path = store.inspection_path("ab" * 32, "settings")
    store.write(path, b"first")
    shutil.rmtree(tmp_path / "store")  # e.g. someone clears the store between two served runs
    store.write(path, b"second")
    assert path.read_bytes() == b"second"
    assert not list(path.parent.glob(".*.tmp"))
