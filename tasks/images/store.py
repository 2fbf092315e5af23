"""Per-image work, memoized by content: hash, decode safely, EXIF, grayscale check, re-encode.

The content store keeps, per sha256 of the source bytes, the inspection result (named by the
settings that shape its verdict too: max_pixels, gray_tolerance, and `store_version()`) and
every derived image (`<sha>-<op>-<store version>.<ext>`), so a nightly run only decodes images
it has never seen, and a changed setting or store code never reuses a verdict made under another.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import warnings
from pathlib import Path

import PIL
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel

from tasks.core.code_versions import closure_version
from tasks.images.grayscale import is_grayscale, to_rgb

# We check the pixel count ourselves (images.max_pixels) before decoding; Pillow's warning
# would only repeat it.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

ORIENTATION_TAG = 0x0112
KEPT_FORMATS = {"JPEG", "PNG", "WEBP"}  # others (BMP, TIFF, GIF) are re-encoded as PNG


class Inspection(BaseModel):
    """What the pixels say about one source file (memoized by sha256)."""

    sha256: str
    ok: bool
    reason: str = ""
    detail: str = ""
    format: str = ""
    mode: str = ""
    raw_width: int = 0
    raw_height: int = 0
    width: int = 0  # after EXIF orientation
    height: int = 0
    orientation: int = 1
    grayscale: bool = False


class ContentStore:
    """Files named by content hash; writes are atomic so parallel or killed runs never corrupt."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, kind: str, sha: str, suffix: str) -> Path:
        return self.root / kind / sha[:2] / f"{sha}{suffix}"

    def inspection_path(self, sha: str, settings: str) -> Path:
        return self._path("inspect", sha, f"-{settings}.json")

    def image_path(self, sha: str, op: str, ext: str) -> Path:
        return self._path("images", sha, f"-{op}-{store_version()}{ext}")

    def write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # its folder is new: made when needed, not checked every time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        tmp.replace(path)


def pillow_key() -> str:
    """Pillow decodes and encodes every memoized result: a new Pillow version makes new memos."""
    return "pil" + PIL.__version__.replace(".", "_")


# The code that makes the store's verdicts and images: this module (decode, EXIF, render,
# encode) and what it imports (the grayscale rule). Its hash, not a version constant to bump by
# hand: a verdict or image made by other code must never pass for one of this code, and an
# edit here (rare) costs one night that decodes again; an edit elsewhere keeps them all.
STORE_CODE = ("images/store.py",)


def store_version() -> str:
    """Pillow's version and the hash of STORE_CODE: part of every verdict's and image's name."""
    return f"{pillow_key()}-{closure_version(STORE_CODE)[:8]}"


def inspection_settings(max_pixels: int, gray_tolerance: int) -> str:
    """What an inspection's verdict depends on besides the bytes (part of its memo's name)."""
    key = f"max_pixels={max_pixels};gray_tolerance={gray_tolerance};{store_version()}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageTooLarge(ValueError):
    """More pixels than `images.max_pixels` (or Pillow's own bomb limit): refused undecoded."""


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode fully (so truncation shows now); refuse bombs before decoding a single pixel.
    Raises ImageTooLarge, or OSError / ValueError / SyntaxError for unreadable data."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} is over {max_pixels} pixels")
    if width <= 0 or height <= 0:
        raise OSError(f"empty image {width}x{height}")
    image.load()
    return image


def decode_or_reason(data: bytes, max_pixels: int) -> Image.Image | tuple[str, str]:
    """The decoded image, or (reason, detail): image_too_large, not_an_image, image_unreadable."""
    try:
        return open_image(data, max_pixels)
    except ImageTooLarge as exc:
        return "image_too_large", str(exc)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow raises ValueError for some broken files too: unreadable, not "too large".
        reason = "not_an_image" if isinstance(exc, UnidentifiedImageError) else "image_unreadable"
        return reason, f"{type(exc).__name__}: {exc}"


def inspect_bytes(data: bytes, sha: str, max_pixels: int, gray_tolerance: int) -> Inspection:
    return _inspect(data, sha, max_pixels, gray_tolerance)[0]


def _inspect(data: bytes, sha: str, max_pixels: int,
             gray_tolerance: int) -> tuple[Inspection, Image.Image | None]:
    """The inspection, and the decoded (not yet oriented) image when it could be decoded."""
    image = decode_or_reason(data, max_pixels)
    if isinstance(image, tuple):
        return Inspection(sha256=sha, ok=False, reason=image[0], detail=image[1]), None
    orientation = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    # exif_transpose copies the pixels even when there is nothing to turn
    oriented = image if orientation == 1 else ImageOps.exif_transpose(image)
    return Inspection(
        sha256=sha, ok=True, format=image.format or "", mode=image.mode,
        raw_width=image.width, raw_height=image.height,
        width=oriented.width, height=oriented.height,
        orientation=orientation if 1 <= orientation <= 8 else 1,
        grayscale=is_grayscale(oriented, gray_tolerance),
    ), image


def inspect_and_decode(path: str | Path, store: ContentStore, max_pixels: int,
                       gray_tolerance: int) -> tuple[Inspection, bool, Image.Image | None]:
    """(inspection, reused, decoded): reused is True when the content store already knew these
    bytes; decoded is the image when they were new (None when the verdict was remembered, or the
    image could not be decoded), so that what is made from it next is not decoded again."""
    data = Path(path).read_bytes()
    sha = sha256_bytes(data)
    memo = store.inspection_path(sha, inspection_settings(max_pixels, gray_tolerance))
    if memo.exists():
        cached = Inspection.model_validate_json(memo.read_bytes())
        return cached, True, None
    inspection, image = _inspect(data, sha, max_pixels, gray_tolerance)
    store.write(memo, inspection.model_dump_json().encode())
    return inspection, False, image


def output_op(inspection: Inspection, policy: str) -> str | None:
    """Which re-encoding the dataset needs, or None to use the source bytes as they are."""
    steps = []
    if inspection.orientation != 1:
        steps.append("orient")
    if inspection.grayscale and policy == "convert":
        if inspection.mode != "RGB":  # RGB with gray content (NEU-DET) already has 3 channels
            steps.append("rgb")
    elif inspection.grayscale and policy == "keep":
        if inspection.mode not in ("L", "RGB"):
            steps.append("gray8")
    elif inspection.mode != "RGB":
        steps.append("rgb")
    if not steps and inspection.format not in KEPT_FORMATS:
        steps.append("png")
    return "+".join(steps) or None


def flip_op(image_op: str | None, kind: str) -> str:
    """The op of a flipped copy: the flip after whatever rendered the dataset's image, so that the
    copy mirrors exactly what the dataset shows (the image step and the augment step must agree)."""
    return f"{image_op}+{kind}" if image_op else kind


def render(image: Image.Image, op: str) -> Image.Image:
    """Apply an op string (`orient`, `rgb`, `gray8`, `png`, `hflip`, `vflip`, `crop-X-Y-W-H`,
    joined by '+')."""
    for step in op.split("+"):
        if step == "orient":
            image = ImageOps.exif_transpose(image)
        elif step == "rgb":
            image = to_rgb(image)
        elif step == "gray8":
            image = to_rgb(image).convert("L")
        elif step == "hflip":
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif step == "vflip":
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        elif step.startswith("crop-"):  # crop-X-Y-W-H: a tile
            x, y, w, h = (int(v) for v in step.split("-")[1:])
            image = image.crop((x, y, x + w, y + h))
        elif step != "png":
            raise ValueError(f"unknown image op {step!r}")
    return image


def encode(image: Image.Image, source_format: str) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if source_format == "JPEG" and image.mode in ("RGB", "L"):
        image.save(buffer, format="JPEG", quality=95)
        return buffer.getvalue(), ".jpg"
    image.save(buffer, format="PNG", compress_level=3)  # 3: near-6 size, much faster on big images
    return buffer.getvalue(), ".png"


def derived_image(source: str | Path, sha: str, op: str, source_format: str, max_pixels: int,
                  store: ContentStore, decoded: Image.Image | None = None) -> tuple[str, bool]:
    """The path of `op` applied to the source image, made once per (sha, op). Returns (path, reused).
    `decoded`: the source already decoded (as `open_image` decodes it), so it is not decoded again."""
    ext = ".jpg" if source_format == "JPEG" else ".png"
    target = store.image_path(sha, op.replace("+", "_"), ext)
    if target.exists():
        return str(target), True
    image = decoded if decoded is not None else open_image(Path(source).read_bytes(), max_pixels)
    data, ext_written = encode(render(image, op), source_format)
    target = target.with_suffix(ext_written)
    store.write(target, data)
    return str(target), False


def dataset_image_bytes(record: dict) -> bytes:
    """The bytes of the image a record (a manifest line, as JSON) shows. A derived image lost
    from the store (a file cleaned by hand) is made again where the record names it, from its
    source, as long as the source still holds the bytes the record was made from."""
    path, source, kind = record["processed_path"], record["image_path"], record["augmentation"]
    # a flipped copy shows the flip of what its record's op rendered
    op = record["image_op"] if kind == "none" else flip_op(record["image_op"], kind)
    try:
        return Path(path or source).read_bytes()
    except FileNotFoundError:
        if not (path and op):
            raise  # the source itself is gone: nothing to make it from
    data = Path(source).read_bytes()
    if sha256_bytes(data) != record["sha256"]:
        raise FileNotFoundError(f"{path} is gone, and {source} has changed since it was made")
    # (its pixel count passed images.max_pixels when the record was made)
    encoded, _ = encode(render(open_image(data, sys.maxsize), op), record["image_format"])
    ContentStore(Path(path).parent).write(Path(path), encoded)
    return encoded
