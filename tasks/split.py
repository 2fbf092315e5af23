"""Stable split: an image's split is a pure function of its content hash and the ratios.

New images never move old ones between splits, so the test split stays frozen across nightly
runs. Because the hash is independent of the labels, every class is split with the same
probabilities: the split is stratified in expectation, and the report shows per-class counts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.cache import CACHE_POLICY
from tasks.config import SplitConfig
from tasks.records import Manifest, Rejection, Sample, read_samples, write_manifest

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


def dedupe_by_content(
    samples: list[Sample],
) -> tuple[list[Sample], list[Rejection], list[Rejection]]:
    """Two annotations of the same pixels would leak across splits: keep the first (by item).
    Returns (kept, rejected images, their rejected boxes)."""
    first: dict[str, str] = {}
    kept, rejected, rejected_boxes = [], [], []
    for sample in sorted(samples, key=lambda s: s.item):
        if sample.sha256 in first:
            rejected.append(Rejection(item=sample.item, reason="duplicate_image",
                                      detail=f"same pixels as {first[sample.sha256]}"))
            rejected_boxes += [Rejection(item=f"{sample.item}#{n}", reason="image_rejected",
                                         detail="duplicate_image") for n in range(len(sample.boxes))]
            continue
        first[sample.sha256] = sample.item
        kept.append(sample)
    return kept, rejected, rejected_boxes


def assign_splits(samples: list[Sample], ratios: SplitConfig) -> list[Sample]:
    return [s.model_copy(update={"split": split_of(s.sha256, ratios)}) for s in samples]


def class_counts_by_split(samples: list[Sample]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for sample in samples:
        counts[sample.split or "train"].update(box.label for box in sample.boxes)
    return {split: dict(sorted(c.items())) for split, c in counts.items()}


class SplitOutput(BaseModel, frozen=True):
    samples: Manifest
    rejected: Manifest
    rejected_boxes: Manifest


def split_step(kept: list[Manifest], ratios: SplitConfig, manifests_dir: str | Path) -> SplitOutput:
    """Merge the shards, drop content duplicates, assign splits."""
    samples = [s for manifest in kept for s in read_samples(manifest)]
    unique, duplicates, duplicate_boxes = dedupe_by_content(samples)
    return SplitOutput(
        samples=write_manifest(assign_splits(unique, ratios), manifests_dir, "split"),
        rejected=write_manifest(duplicates, manifests_dir, "duplicates"),
        rejected_boxes=write_manifest(duplicate_boxes, manifests_dir, "duplicate-boxes"),
    )


@task(name="split", cache_policy=CACHE_POLICY, persist_result=True)
def split_task(kept: list[Manifest], ratios: SplitConfig, manifests_dir: str) -> SplitOutput:
    return split_step(kept, ratios, manifests_dir)
