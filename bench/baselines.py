"""What the pipeline is measured against: Pillow's own decode + re-encode, and the notebook way."""

from __future__ import annotations

import functools
import hashlib
import io
import math
import multiprocessing
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageChops

from tasks.core.config import SplitConfig
from tasks.core.splits import split_of


def _decode_once_encode_each(path: Path, flip: bool) -> int:
    with Image.open(path) as image:
        outputs = [image.convert("RGB")]
        if flip:
            outputs.append(outputs[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        size = 0
        for output in outputs:
            buffer = io.BytesIO()
            output.save(buffer, format="JPEG", quality=95)
            size += len(buffer.getvalue())
        return size


@functools.lru_cache(maxsize=4)
def floor_workers(workers: int) -> ProcessPoolExecutor:
    """Processes for the floor, started (and warmed) once: Pillow's JPEG encoder holds the GIL,
    so threads would not reach all cores (2 cores: 1.0 s on threads, 0.69 s on processes)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    list(pool.map(abs, range(workers)))
    return pool


def pillow_limit(images: list[Path], workers: int, flipped: frozenset[Path] = frozenset()) -> int:
    """The floor: decode every source image once and encode every output once (each image, and
    the flipped copy of each image in `flipped`), in the same format, on `workers` processes."""
    pool = floor_workers(workers)
    chunk = max(1, len(images) // (8 * workers))
    return sum(pool.map(_decode_once_encode_each, images, [p in flipped for p in images],
                        chunksize=chunk))


def training_images(images: list[Path], ratios: SplitConfig | None = None) -> frozenset[Path]:
    """The images the pipeline flips: those its split puts in `train` (found before the clock
    starts, so the baseline pays nothing for knowing them)."""
    ratios = ratios or SplitConfig()
    return frozenset(path for path in images
                     if split_of(hashlib.sha256(path.read_bytes()).hexdigest(), ratios) == "train")


def notebook(source: Path, out: Path) -> int:
    """A straightforward notebook cell: one loop, parse XML, open image, drop or convert gray,
    flip train images, write loc targets, build a datasets.Dataset and save it as parquet."""
    import datasets

    rows = []
    for n, xml in enumerate(sorted((source / "annotations").glob("*.xml"))):
        root = ET.parse(xml).getroot()
        image = Image.open(source / "images" / root.find("filename").text).convert("RGB")
        r, g, b = image.split()
        gray = ImageChops.difference(r, g).getbbox() is None and ImageChops.difference(g, b).getbbox() is None
        if gray:
            image = image.convert("L").convert("RGB")
        width, height = image.size
        boxes, labels = [], []
        for obj in root.findall("object"):
            bb = obj.find("bndbox")
            x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([x1 - 1, y1 - 1, x2, y2])
            labels.append(obj.find("name").text)
        variants = [(image, boxes)]
        if n % 10 < 8:  # train split
            flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            variants.append((flipped, [[width - b[2], b[1], width - b[0], b[3]] for b in boxes]))
        for picture, bxs in variants:
            target = "".join(
                label + "".join(f"<loc_{min(999, max(0, math.floor(v / (s / 1000))))}>"
                                for v, s in zip(b, (width, height, width, height), strict=True))
                for b, label in zip(bxs, labels, strict=True))
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=95)
            rows.append({"image": {"bytes": buffer.getvalue(), "path": None}, "target": target})
    features = datasets.Features({"image": datasets.Image(), "target": datasets.Value("string")})
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.to_parquet(str(out / "notebook.parquet"))
    return len(rows)
