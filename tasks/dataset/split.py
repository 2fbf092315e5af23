"""Stable split: an image's split is a pure function of its content hash and the ratios
(`core/splits.py`), assigned here after duplicates are dropped.

New images never move old ones between splits, so the test split stays frozen across nightly
runs. Because the hash is independent of the labels, every class is split with the same
probabilities: the split is stratified in expectation, and the report shows per-class counts.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.core.caching import CACHE_POLICY
from tasks.core.config import SplitConfig
from tasks.core.records import Manifest, ManifestWriter, Rejection, Sample, box_rejections, read_records
from tasks.core.splits import split_of


def duplicate_items(samples_in_item_order: Iterable[Sample]) -> dict[str, str]:
    """item -> the earlier item with the same pixels (the first, by item, keeps them)."""
    first: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for sample in samples_in_item_order:
        if sample.sha256 in first:
            duplicates[sample.item] = first[sample.sha256]
        else:
            first[sample.sha256] = sample.item
    return duplicates


def duplicate_rejections(sample: Sample, original: str) -> tuple[Rejection, list[Rejection]]:
    return (Rejection(item=sample.item, reason="duplicate_image", detail=f"same pixels as {original}"),
            box_rejections(sample.item, len(sample.boxes), "image_rejected", "duplicate_image"))


class SplitOutput(BaseModel, frozen=True):
    samples: Manifest
    rejected: Manifest
    rejected_boxes: Manifest


def split_step(kept: list[Manifest], ratios: SplitConfig, manifests_dir: str | Path) -> SplitOutput:
    """Merge the shards (each in item order), drop content duplicates, assign splits. Streams:
    one pass finds the duplicates, a second writes the records; neither holds the set."""

    def in_item_order():
        return heapq.merge(*(read_records(m, Sample) for m in kept), key=lambda s: s.item)

    duplicates = duplicate_items(in_item_order())
    with ManifestWriter(manifests_dir, "split") as out, \
            ManifestWriter(manifests_dir, "duplicates") as rejected, \
            ManifestWriter(manifests_dir, "duplicate-boxes") as rejected_boxes:
        for sample in in_item_order():
            if sample.item in duplicates:
                image, boxes = duplicate_rejections(sample, duplicates[sample.item])
                rejected.add(image)
                for box in boxes:
                    rejected_boxes.add(box)
            else:
                out.add(sample.model_copy(update={"split": split_of(sample.sha256, ratios)}))
    return SplitOutput(samples=out.manifest, rejected=rejected.manifest,
                       rejected_boxes=rejected_boxes.manifest)


@task(name="split", cache_policy=CACHE_POLICY, persist_result=True)
def split_task(kept: list[Manifest], ratios: SplitConfig, manifests_dir: str) -> SplitOutput:
    return split_step(kept, ratios, manifests_dir)
