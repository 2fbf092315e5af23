"""Is an image truly grayscale? Mode alone lies (NEU-DET is RGB with R=G=B), so look at pixels."""

from __future__ import annotations

from PIL import Image, ImageChops

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _palette_is_gray(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    used = {index for _, index in image.getcolors(maxcolors=256) or []}
    for index in used:
        rgb = palette[3 * index: 3 * index + 3]
        if len(rgb) == 3 and not (rgb[0] == rgb[1] == rgb[2]):
            return False
    return True


def channels_equal(image: Image.Image, tolerance: int = 0) -> bool:
    """True when R, G and B never differ by more than `tolerance` anywhere."""
    red, green, blue = image.convert("RGB").split()[:3]
    for first, second in ((red, green), (green, blue)):
        low, high = ImageChops.difference(first, second).getextrema()
        if high > tolerance:
            return False
    return True


def is_grayscale(image: Image.Image, tolerance: int = 0) -> bool:
    """Gray modes; palettes whose used colours are all gray; RGB/RGBA/CMYK/YCbCr with equal channels."""
    if image.mode in GRAY_MODES or image.mode.startswith("I;16"):
        return True
    if image.mode in ("P", "PA"):
        return _palette_is_gray(image)
    return channels_equal(image, tolerance)


def to_rgb(image: Image.Image) -> Image.Image:
    """3-channel RGB. 16-bit and float gray are scaled to 8 bits, not clipped."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda value: (value - low) * scale).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not black garbage from the hidden colour.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")
