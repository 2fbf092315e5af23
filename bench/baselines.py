"""What the pipeline is measured against: Pillow's own decode + re-encode, and the notebook way."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageChops


def pillow_limit(images: list[Path], workers: int) -> int:
    """Decode and re-encode every image once (same format), on `workers` threads: the floor."""

    def once(path: Path) -> int:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
            return len(buffer.getvalue())

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(once, images))


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
