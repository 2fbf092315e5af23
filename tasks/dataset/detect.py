"""What a person's folder holds, for `defectflow init`: the annotation format (Pascal VOC XML,
YOLO `.txt` with its `classes.txt`, a COCO JSON), where the images and annotations are, the
classes, and the share of grayscale images. Read with the ingest's own safety rules (defusedxml,
no link followed out of the folder); nothing is written here."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from defusedxml import ElementTree

from tasks.ingest.sources import is_image_name, is_junk_name, walk_files

SAMPLED_IMAGES = 200  # the grayscale share is read on this many images at most


@dataclass
class Detected:
    format: str  # voc | yolo | coco
    images: Path
    annotations: Path
    classes: list[str]
    images_found: int
    grayscale_share: float
    notes: list[str] = field(default_factory=list)


class NothingToDetect(ValueError):
    """The folder holds no annotations defectflow reads; the message says what it looked for."""


def _parent_with_most(paths: list[Path], root: Path) -> Path:
    counts = Counter(path.parent for path in paths)
    return counts.most_common(1)[0][0] if counts else root


def _coco_file(files: list[Path]) -> Path | None:
    for path in sorted(p for p in files if p.suffix.lower() == ".json"):
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(found, dict) and isinstance(found.get("images"), list) and \
                isinstance(found.get("annotations"), list):
            return path
    return None


def _voc_classes(xmls: list[Path]) -> tuple[list[str], int]:
    names: Counter = Counter()
    read = 0
    for path in xmls:
        try:
            root = ElementTree.parse(path).getroot()
        except Exception:  # noqa: BLE001 - prepare quarantines it with its reason; init only counts
            continue
        if root.tag != "annotation":
            continue
        read += 1
        names.update((obj.findtext("name") or "").strip() for obj in root.iter("object"))
    names.pop("", None)
    return sorted(names), read


def grayscale_share(images: list[Path], tolerance: int = 2) -> float:
    from PIL import Image

    from tasks.images.grayscale import is_grayscale

    sample, gray = images[:SAMPLED_IMAGES], 0
    for path in sample:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (256, 256))  # JPEGs decode small: colour needs no detail
                gray += is_grayscale(image, tolerance)
        except Exception:  # noqa: BLE001 - unreadable: prepare says so, with its reason
            continue
    return gray / len(sample) if sample else 0.0


def detect_layout(root: str | Path) -> Detected:
    root = Path(root).resolve()
    files = [p for p in walk_files(root) if not is_junk_name(p.name)]
    images = sorted(p for p in files if is_image_name(p.name))
    if not images:
        raise NothingToDetect(f"{root} holds no images (jpg, png, bmp, tif, webp)")
    share = grayscale_share(images)
    if coco := _coco_file(files):
        found = json.loads(coco.read_text(encoding="utf-8"))
        classes = sorted({c.get("name", "") for c in found.get("categories", [])} - {""})
        return Detected("coco", _parent_with_most(images, root), coco, classes, len(images),
                        share, [f"COCO file {coco.name}: {len(found['images'])} images, "
                                f"{len(found['annotations'])} boxes"])
    classes_files = [p for p in files if p.name == "classes.txt"]
    if classes_files:
        labels_dir = classes_files[0].parent
        classes = [line.strip() for line in classes_files[0].read_text(encoding="utf-8")
                   .splitlines() if line.strip()]
        return Detected("yolo", _parent_with_most(images, root), labels_dir, classes,
                        len(images), share, [f"YOLO labels beside {classes_files[0]}"])
    xmls = [p for p in files if p.suffix.lower() == ".xml"]
    classes, read = _voc_classes(xmls)
    if read:
        notes = [f"{read} Pascal VOC XML files"]
        if read < len(xmls):
            notes.append(f"{len(xmls) - read} other XML files (prepare reports each)")
        return Detected("voc", _parent_with_most(images, root), _parent_with_most(xmls, root),
                        classes, len(images), share, notes)
    raise NothingToDetect(f"{root} has {len(images)} images but no annotations defectflow "
                          "reads: Pascal VOC XML files, YOLO .txt files with a classes.txt, or a "
                          "COCO JSON file with `images` and `annotations`")


def config_text(name: str, detected: Detected, config_dir: Path) -> str:
    """A config for the folder, paths relative to where it is written, what was guessed said."""
    import os

    def rel(path: Path) -> str:
        return os.path.relpath(path, config_dir.resolve())

    grayscale = "convert" if detected.grayscale_share > 0 else "drop"
    lines = [f"# Written by `defectflow init` from {detected.images.parent}: "
             f"{detected.images_found} images, format {detected.format} "
             f"({'; '.join(detected.notes)}).",
             "# Check it with `defectflow check`; every key: docs/config.md.",
             f"name: {name}",
             f"source: {{format: {detected.format}, images: {rel(detected.images)}, "
             f"annotations: {rel(detected.annotations)}}}",
             f"# {detected.grayscale_share:.0%} of the images sampled are grayscale: "
             + ("convert makes them 3-channel RGB (drop would leave them out)"
                if grayscale == "convert" else "none seen, so any that comes later is dropped"),
             f"grayscale: {grayscale}",
             "augment: {hflip: true, vflip: false}",
             "split: {train: 0.8, validation: 0.1, test: 0.1}"]
    if detected.classes:
        lines += [f"# the classes found in the annotations ({len(detected.classes)}); a box of "
                  "another class is dropped as unknown_label",
                  "labels: [" + ", ".join(json.dumps(c) if not c.replace("_", "").replace(
                      "-", "").isalnum() else c for c in detected.classes) + "]"]
    else:
        lines.append("# no class names found: every name in the annotations is a class")
    return "\n".join(lines) + "\n"
