"""Boxes drawn on an image (Pillow only): what a person opens to see what the model said."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from tasks.core.records import Box

# Distinct, readable on gray steel and green boards alike (matplotlib's tab10).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
TRUTH_COLOUR = "#00ff00"


def colour_of(label: str, labels: Sequence[str]) -> str:
    return PALETTE[labels.index(label) % len(PALETTE)] if label in labels else PALETTE[-1]


def draw_boxes(image: Image.Image, boxes: Sequence[Box], scores: Sequence[float | None],
               labels: Sequence[str] = (), colour: str | None = None) -> Image.Image:
    """A copy of `image` (RGB) with each box outlined and captioned `label score`; one colour
    per class of `labels`, or `colour` for all. Line and text scale with the image."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = max(out.width, out.height)
    line = max(1, side // 300)
    font = ImageFont.load_default(size=max(10, side // 45))
    for box, score in zip(boxes, scores, strict=True):
        ink = colour or colour_of(box.label, list(labels))
        draw.rectangle((box.x1, box.y1, max(box.x1, box.x2 - 1), max(box.y1, box.y2 - 1)),
                       outline=ink, width=line)
        caption = box.label if score is None else f"{box.label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        y = box.y1 - (bottom - top) - 2 if box.y1 >= bottom - top + 2 else box.y1
        x = max(0, min(box.x1, out.width - (right - left) - 3))  # the caption stays in the image
        draw.rectangle((x, y, x + right - left + 2, y + bottom - top + 2), fill=ink)
        draw.text((x + 1 - left, y + 1 - top), caption, fill="white", font=font)
    return out
