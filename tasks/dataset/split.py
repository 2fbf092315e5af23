"""Stable split: an image's split is a pure function of its content hash and the ratios
(`core/splits.py`), assigned here after duplicates are dropped.

New images never move old ones between splits, so the test split stays frozen across nightly
runs. Because the hash is independent of the labels, every class is split with the same
probabilities: the split is stratified in expectation, and the report shows per-class counts.
"""

from __future__ import annotations

import heapq
from pathlib import Path

from prefect import task
from pydantic import BaseModel
from pydantic_core import from_json

from tasks.core.caching import CACHE_POLICY
from tasks.core.config import SplitConfig
from tasks.core.records import Manifest, ManifestWriter, Rejection, Sample, box_rejections, read_lines
from tasks.core.splits import split_of


def duplicate_rejections(sample: Sample, original: str) -> tuple[Rejection, list[Rejection]]:
    return (Rejection(item=sample.item, reason="duplicate_image", detail=f"same pixels as {original}"),
            box_rejections(sample.item, len(sample.boxes), "image_rejected", "duplicate_image"))


class SplitOutput(BaseModel, frozen=True):
    samples: Manifest
    rejected: Manifest
    rejected_boxes: Manifest


def split_step(kept: list[Manifest], ratios: SplitConfig, manifests_dir: str | Path) -> SplitOutput:
    """Merge the shards (each in item order), drop content duplicates, assign splits, in one
    streamed pass: in item order the first of a set of duplicates comes first, so a record is
    known to be a duplicate when it is reached. Only each image hash's first item is held; a
    record is read as plain JSON for its item and hash, and kept as the line it is, its split set."""
    first_with: dict[str, str] = {}  # sha256 -> the first item with those pixels
    with ManifestWriter(manifests_dir, "split") as out, \
            ManifestWriter(manifests_dir, "duplicates") as rejected, \
            ManifestWriter(manifests_dir, "duplicate-boxes") as rejected_boxes:
        for item, sha, line in heapq.merge(*(_keyed_lines(m) for m in kept),
                                           key=lambda keyed: keyed[0]):
            original = first_with.setdefault(sha, item)
            if original != item:
                image, boxes = duplicate_rejections(Sample.model_validate_json(line), original)
                rejected.add(image)
                for box in boxes:
                    rejected_boxes.add(box)
            else:
                out.add_line(with_split(line, split_of(sha, ratios)))
    return SplitOutput(samples=out.manifest, rejected=rejected.manifest,
                       rejected_boxes=rejected_boxes.manifest)


def _keyed_lines(manifest: Manifest):
    for line in read_lines(manifest):
        record = from_json(line)
        yield record["item"], record["sha256"], line


UNSPLIT = '"split":null'


def with_split(line: str, split: str) -> str:
    """The record's line with its split set, the same bytes as pydantic would write. In JSON a
    quote inside a string is escaped, so `"split":null` occurs once, as the record's own field;
    a line that holds anything else is parsed and written again."""
    if line.count(UNSPLIT) == 1:
        return line.replace(UNSPLIT, f'"split":"{split}"')
    sample = Sample.model_validate_json(line)
    return sample.model_copy(update={"split": split}).model_dump_json()


@task(name="split", cache_policy=CACHE_POLICY, persist_result=True)
def split_task(kept: list[Manifest], ratios: SplitConfig, manifests_dir: str) -> SplitOutput:
    return split_step(kept, ratios, manifests_dir)
