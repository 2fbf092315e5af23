"""Flipped copies of training images with exactly mirrored boxes (x1' = W - x2, x2' = W - x1)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

from prefect import task

from tasks.core.caching import IMAGE_LIBRARIES, cache_policy
from tasks.core.code_versions import closure_version
from tasks.core.config import AugmentConfig
from tasks.core.memo import ChunkMemo, LineMemo
from tasks.core.records import Manifest, ManifestWriter, Sample, read_lines
from tasks.images.boxes import hflip, vflip
from tasks.images.shard import as_reused
from tasks.images.store import ContentStore, derived_image, flip_op, pillow_key

CHUNK = 64  # samples whose flips are made at once
# The code whose answers the memo holds: this step and what it imports (box flips, the content
# store that renders them), not the whole package: an edit elsewhere keeps them.
AUGMENT_CODE = ("dataset/augment.py",)


def flipped(sample: Sample, kind: str, image_path: str) -> Sample:
    """The record of a flipped copy; the pixels are made by `derived_image`."""
    if kind == "hflip":
        boxes = [hflip(box, sample.width) for box in sample.boxes]
    elif kind == "vflip":
        boxes = [vflip(box, sample.height) for box in sample.boxes]
    else:
        raise ValueError(f"unknown flip {kind!r}")
    return sample.model_copy(update={"boxes": boxes, "augmentation": kind,
                                     "processed_path": image_path})


def augment(samples: Iterable[Sample], config: AugmentConfig, store_root: str,
            max_pixels: int, counters: Counter | None = None,
            workers: int | None = None) -> Iterator[Sample]:
    """Originals plus flipped copies of the `train` ones: each copy flips exactly what the
    dataset shows for the original (its EXIF/RGB rendering included). Streams, in input order;
    the flips of a chunk of samples are encoded on `workers` threads (Pillow lets go of the GIL
    while it decodes and encodes; default: one per core)."""
    store = ContentStore(store_root)
    counters = Counter() if counters is None else counters
    kinds = config.kinds

    def with_copies(sample: Sample) -> list[tuple[Sample, bool | None]]:
        out: list[tuple[Sample, bool | None]] = [(sample, None)]
        if sample.split != "train":
            return out
        for kind in kinds:
            path, reused = derived_image(sample.image_path, sample.sha256, flip_op(sample.image_op, kind),
                                         sample.image_format, max_pixels, store)
            out.append((flipped(sample, kind, path), reused))
        return out

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        remaining = iter(samples)
        while chunk := list(islice(remaining, CHUNK)):  # a chunk at a time: memory stays flat
            for records in pool.map(with_copies, chunk):
                for record, reused in records:
                    if reused is not None:
                        counters[record.augmentation] += 1
                        counters["encodes_reused" if reused else "images_encoded"] += 1
                    yield record


def augment_key(config: AugmentConfig, max_pixels: int) -> str:
    """What the flips depend on: this config, AUGMENT_CODE and Pillow."""
    return "|".join([config.model_dump_json(), str(max_pixels), closure_version(AUGMENT_CODE),
                     pillow_key()])


def augment_memo(config: AugmentConfig, max_pixels: int, store_root: str | Path) -> LineMemo:
    """Each sample's line and its flips' lines, by record (`augment_key`)."""
    return LineMemo(store_root, "augment", augment_key(config, max_pixels))


def augment_step(manifest: Manifest, config: AugmentConfig, max_pixels: int, store_root: str,
                 manifests_dir: str | Path) -> tuple[Manifest, dict[str, int]]:
    """`augment` over a manifest, in input order, with two memos: a chunk of records unchanged
    since an earlier run (`ChunkMemo`) gives its remembered lines at once, and within a chunk
    that changed, a sample seen before (`augment_memo`) gives its lines without a pydantic parse;
    both as long as their flips' files are still there (the memos check their "paths")."""
    counters: Counter = Counter()
    memo = augment_memo(config, max_pixels, store_root)

    def augment_chunk(chunk: list[str]) -> tuple[list[str], dict]:
        """The chunk's samples with their flips; extras: the work it took and the flips' files."""
        work: Counter = Counter()
        answers = [memo.get(line) for line in chunk]
        fresh = iter(made([line for line, answer in zip(chunk, answers, strict=True)
                           if answer is None], work))
        outputs, paths = [], []
        for answer in answers:
            if answer is not None:
                kinds = answer[1].get("kinds", [])
                work.update(kinds)
                work["encodes_reused"] += len(kinds)
                paths += answer[1].get("paths", [])
            else:
                answer = next(fresh)
                paths += answer[1]["paths"]
            outputs += answer[0]
        return outputs, {"counters": dict(work), "paths": paths}

    def made(lines: list[str], work: Counter) -> Iterator[tuple[list[str], dict]]:
        """Each line's sample with its flips, made (and remembered), in order."""
        made_records = augment((Sample.model_validate_json(line) for line in lines), config,
                               store_root, max_pixels, work)
        group: list[Sample] = []
        position = 0
        for record in [*made_records, None]:  # a sample's flips follow it; None closes the last
            if group and (record is None or record.augmentation == "none"):
                outputs, copies = [r.model_dump_json() for r in group], group[1:]
                extras = {"kinds": [c.augmentation for c in copies],
                          "paths": [c.processed_path for c in copies]}
                memo.put(lines[position], outputs, extras)
                position += 1
                yield outputs, extras
                group = []
            if record is not None:
                group.append(record)

    with ManifestWriter(manifests_dir, "augmented") as out:
        chunks = ChunkMemo(store_root, "augment", augment_key(config, max_pixels))
        for outputs, extras, remembered in chunks.map(read_lines(manifest), augment_chunk):
            counters.update(as_reused(extras["counters"]) if remembered else extras["counters"])
            out.add_lines(outputs)
    memo.save()
    return out.manifest, dict(counters)


@task(name="augment", cache_policy=cache_policy(IMAGE_LIBRARIES), persist_result=True)
def augment_task(manifest: Manifest, config: AugmentConfig, max_pixels: int, store_root: str,
                 manifests_dir: str) -> tuple[Manifest, dict[str, int]]:
    return augment_step(manifest, config, max_pixels, store_root, manifests_dir)
