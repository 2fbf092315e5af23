"""A small synthetic LabelImg-style defect dataset, for the demo and the tests.

Textured steel-like backgrounds with defects drawn at random positions and sizes (classes below),
written as JPEG/PNG + Pascal VOC XML exactly as LabelImg writes them (1-based inclusive corners).
Some images are grayscale, and the set carries the usual trouble: a truncated JPEG, an XML whose
image is missing, a macOS `._` junk file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("scratch", "spot", "patch")


@dataclass(frozen=True)
class DrawnBox:
    label: str
    xmin: int  # VOC: 1-based, inclusive
    ymin: int
    xmax: int
    ymax: int


def voc_xml(filename: str, width: int, height: int, depth: int, boxes: list[DrawnBox]) -> str:
    objects = "".join(
        f"""
	<object>
		<name>{escape(b.label)}</name>
		<pose>Unspecified</pose>
		<truncated>0</truncated>
		<difficult>0</difficult>
		<bndbox>
			<xmin>{b.xmin}</xmin>
			<ymin>{b.ymin}</ymin>
			<xmax>{b.xmax}</xmax>
			<ymax>{b.ymax}</ymax>
		</bndbox>
	</object>"""
        for b in boxes
    )
    return f"""<annotation>
	<folder>images</folder>
	<filename>{escape(filename)}</filename>
	<source>
		<database>defectflow-synthetic</database>
	</source>
	<size>
		<width>{width}</width>
		<height>{height}</height>
		<depth>{depth}</depth>
	</size>
	<segmented>0</segmented>{objects}
</annotation>
"""


def _background(rng: random.Random, size: int, tint: tuple[int, int, int]) -> Image.Image:
    # Gaussian grain around mid-gray, drawn from the seeded generator (Pillow's effect_noise uses
    # an unseeded C generator: the same seed would give other pixels, hence other splits).
    grain = np.random.default_rng(rng.getrandbits(32)).normal(128, rng.uniform(18, 30), (size, size))
    noise = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8), "L")
    noise = noise.filter(ImageFilter.GaussianBlur(1))
    base = Image.merge("RGB", [noise.point(lambda v, t=t: min(255, max(0, v * 0.5 + t - 64)))
                               for t in tint])
    return base


def _draw_defect(draw: ImageDraw.ImageDraw, rng: random.Random, label: str,
                 size: int, extent: tuple[float, float] = (1 / 6, 1 / 3)) -> DrawnBox:
    w = rng.randint(int(size * extent[0]), int(size * extent[1]))
    h = rng.randint(int(size * extent[0]), int(size * extent[1]))
    x0 = rng.randint(0, size - w - 1)
    y0 = rng.randint(0, size - h - 1)
    x1, y1 = x0 + w, y0 + h  # exclusive edge
    if label == "scratch":  # a dark diagonal line across the box
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1 - 1, y1 - 1)], fill=(20, 20, 20), width=3)
        else:
            draw.line([(x0, y1 - 1), (x1 - 1, y0)], fill=(20, 20, 20), width=3)
    elif label == "spot":  # a dark disc
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=(35, 30, 30))
    else:  # patch: a bright rectangle
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=(235, 235, 225))
    # VOC corners of the pixels [x0, x1) x [y0, y1): 1-based inclusive.
    return DrawnBox(label, x0 + 1, y0 + 1, x1, y1)


def make_image(rng: random.Random, size: int, max_defects: int,
               extent: tuple[float, float] = (1 / 6, 1 / 3)) -> tuple[Image.Image, list[DrawnBox]]:
    tint = (rng.randint(110, 150), rng.randint(110, 150), rng.randint(110, 150))
    image = _background(rng, size, tint)
    draw = ImageDraw.Draw(image)
    boxes = [_draw_defect(draw, rng, rng.choice(CLASSES), size, extent)
             for _ in range(rng.randint(1, max_defects))]
    return image, boxes


def generate(folder: str | Path, count: int = 60, size: int = 128, seed: int = 0,
             gray_fraction: float = 0.25, max_defects: int = 2, start: int = 0,
             troubles: bool = True, extent: tuple[float, float] = (1 / 6, 1 / 3)) -> dict[str, int]:
    """Write `images/` and `annotations/` under `folder`. Numbering starts at `start`, so a second
    call adds new images next to the old ones (the nightly 'new images landed' case)."""
    folder = Path(folder)
    images, annotations = folder / "images", folder / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed * 100_003 + start)
    written = {"images": 0, "grayscale": 0, "boxes": 0}
    for number in range(start, start + count):
        image, boxes = make_image(rng, size, max_defects, extent)
        stem = f"defect_{number:05d}"
        gray = rng.random() < gray_fraction
        if gray:
            image = image.convert("L")
            written["grayscale"] += 1
        suffix = ".png" if number % 5 == 0 else ".jpg"
        image.save(images / f"{stem}{suffix}", quality=92)
        depth = 1 if gray else 3
        (annotations / f"{stem}.xml").write_text(
            voc_xml(stem + suffix, size, size, depth, boxes), encoding="utf-8")
        written["images"] += 1
        written["boxes"] += len(boxes)
    if troubles:
        write_troubles(folder, size, rng)
    return written


def write_troubles(folder: Path, size: int, rng: random.Random) -> None:
    """A truncated JPEG, an XML whose image does not exist, and a macOS junk file."""
    images, annotations = folder / "images", folder / "annotations"
    image, boxes = make_image(rng, size, 1)
    broken = images / "broken_upload.jpg"
    image.save(broken, quality=92)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])
    (annotations / "broken_upload.xml").write_text(
        voc_xml("broken_upload.jpg", size, size, 3, boxes), encoding="utf-8")
    (annotations / "lost_image.xml").write_text(
        voc_xml("lost_image.jpg", size, size, 3, boxes), encoding="utf-8")
    (images / "._defect_00001.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
