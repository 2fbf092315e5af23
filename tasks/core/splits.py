"""Which split an image belongs to: a pure function of its content hash and the ratios.

Here in `core` because two stages ask: the image step (it renders the training images' flips
while it has their pixels) and the split step (it assigns the splits)."""

from __future__ import annotations

import hashlib

from tasks.core.config import SplitConfig

SPLITS = ("train", "validation", "test")


def split_of(sha256: str, ratios: SplitConfig) -> str:
    # A second hash (not the sha256 prefix itself) so the split is uniform even for content
    # hashes that someone chose on purpose.
    draw = int.from_bytes(hashlib.sha256(f"split:{sha256}".encode()).digest()[:8], "big") / 2**64
    if draw < ratios.train:
        return "train"
    if draw < ratios.train + ratios.validation:
        return "validation"
    return "test" if ratios.test > 0 else ("validation" if ratios.validation > 0 else "train")
