"""Benchmark inputs: NEU-DET replicated to thousands of distinct images, and big factory images."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from PIL import Image

from tasks.demo.sample_data import DrawnBox, voc_xml

NEU_DET = Path(__file__).resolve().parents[2] / "shared" / "data" / "neu_det"


def replicate_neu_det(target: Path, count: int) -> Path:
    """`count` images made from NEU-DET's 300, each copy marked with its number in a corner
    block so that every file has its own content hash (identical copies would be deduplicated
    and cost nothing)."""
    marker = target / ".replica-v2"
    if marker.exists() and len(list((target / "annotations").iterdir())) == count:
        return target
    if not NEU_DET.is_dir():
        raise SystemExit(f"{NEU_DET} is absent: the benchmarks need ../shared/data/neu_det")
    shutil.rmtree(target, ignore_errors=True)
    (target / "images").mkdir(parents=True)
    (target / "annotations").mkdir(parents=True)
    xmls = sorted((NEU_DET / "annotations").glob("*.xml"))
    for n in range(count):
        xml = xmls[n % len(xmls)]
        stem = f"{xml.stem}_r{n:05d}"
        image = Image.open(NEU_DET / "images" / f"{xml.stem}.jpg").convert("RGB")
        copy = n // len(xmls)
        # An 8x8 block per bit of the copy number: JPEG keeps blocks, so every copy differs.
        for bit in range(8):
            shade = 255 if copy >> bit & 1 else 0
            image.paste((shade, shade, shade), (bit * 8, 0, bit * 8 + 8, 8))
        image.save(target / "images" / f"{stem}.jpg", quality=92)
        text = xml.read_text().replace(f"<filename>{xml.stem}.jpg</filename>",
                                       f"<filename>{stem}.jpg</filename>")
        text = text.replace(f"<filename>{xml.stem}</filename>", f"<filename>{stem}.jpg</filename>")
        (target / "annotations" / f"{stem}.xml").write_text(text)
    marker.touch()
    return target


def big_images(target: Path, count: int, size: tuple[int, int] = (2048, 1536), seed: int = 0) -> Path:
    """Factory-sized (3 MP) grayscale-looking JPEGs with a few boxes each."""
    if (target / "annotations").is_dir() and len(list((target / "annotations").iterdir())) == count:
        return target
    shutil.rmtree(target, ignore_errors=True)
    (target / "images").mkdir(parents=True)
    (target / "annotations").mkdir(parents=True)
    rng = random.Random(seed)
    for n in range(count):
        noise = Image.effect_noise(size, 30).convert("RGB")
        boxes = []
        for _ in range(3):
            w, h = rng.randint(60, 300), rng.randint(60, 300)
            x, y = rng.randint(0, size[0] - w - 1), rng.randint(0, size[1] - h - 1)
            noise.paste((20, 20, 20), (x, y, x + w, y + h))
            boxes.append(DrawnBox("dent", x + 1, y + 1, x + w, y + h))
        noise.save(target / "images" / f"big_{n:04d}.jpg", quality=90)
        (target / "annotations" / f"big_{n:04d}.xml").write_text(
            voc_xml(f"big_{n:04d}.jpg", size[0], size[1], 3, boxes))
    return target


def config_for(source: Path, path: Path, grayscale: str = "convert") -> Path:
    path.write_text(f"name: bench\nsource: {{format: voc, images: {source / 'images'}, "
                    f"annotations: {source / 'annotations'}}}\ngrayscale: {grayscale}\n"
                    "augment: {hflip: true, vflip: false}\n")
    return path
