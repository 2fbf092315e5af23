"""The images to predict on: every image file under a folder, read with prepare's safety rules.
A file that cannot be used is quarantined with a named reason; nothing is skipped silently."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from tasks.core.records import Rejection
from tasks.images.grayscale import is_grayscale, to_rgb
from tasks.images.store import decode_or_reason
from tasks.ingest.sources import (
    PathOutsideSource,
    inside,
    is_image_name,
    is_junk_name,
    walk_files,
)


@dataclass(frozen=True)
class ImageInput:
    item: str  # the path relative to the folder, as the reports name it
    path: Path

    @property
    def stem(self) -> str:
        """`sub/photo` for `sub/photo.JPG`: where its XML and overlay go."""
        return str(PurePosixPath(self.item).with_suffix(""))


def list_inputs(root: Path) -> tuple[list[ImageInput], list[Rejection]]:
    """(images to predict on, quarantined files): links out of the folder, hidden and macOS
    resource-fork files, and a second image with the same name but another extension (one
    LabelImg XML per name) are quarantined; files that are not named as images are not counted."""
    kept: list[ImageInput] = []
    rejected: list[Rejection] = []
    seen: dict[str, str] = {}
    for path in (p for p in walk_files(root) if is_image_name(p.name)):
        item = path.relative_to(root).as_posix()
        try:
            inside(root, path)
        except PathOutsideSource as exc:
            rejected.append(Rejection(item=item, reason="path_outside_source", detail=str(exc)))
            continue
        if is_junk_name(path.name):
            rejected.append(Rejection(item=item, reason="junk_file",
                                      detail="hidden or macOS resource-fork file"))
            continue
        image = ImageInput(item=item, path=path)
        if (first := seen.setdefault(image.stem.lower(), item)) != item:
            rejected.append(Rejection(item=item, reason="duplicate_stem",
                                      detail=f"{first} has the same name: one XML for both"))
            continue
        kept.append(image)
    return kept, rejected


@dataclass
class LoadedImage:
    source: ImageInput
    image: Image.Image  # RGB, EXIF orientation applied: what the model sees, what boxes refer to
    depth: int  # what LabelImg writes: 1 for a grayscale picture, 3 for colour


def load_input(image: ImageInput, max_pixels: int,
               gray_tolerance: int = 2) -> LoadedImage | Rejection:
    """Decoded and upright, or the reason it cannot be (too large, not an image, unreadable)."""
    decoded = decode_or_reason(image.path.read_bytes(), max_pixels)
    if isinstance(decoded, tuple):
        return Rejection(item=image.item, reason=decoded[0], detail=decoded[1])
    upright = ImageOps.exif_transpose(decoded)
    depth = 1 if is_grayscale(upright, gray_tolerance) else 3
    return LoadedImage(source=image, image=to_rgb(upright), depth=depth)
