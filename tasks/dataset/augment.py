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
from tasks.core.config import AugmentConfig
from tasks.core.records import Manifest, Sample, read_records, write_manifest
from tasks.images.boxes import hflip, vflip
from tasks.images.store import ContentStore, derived_image, flip_op

CHUNK = 64  # samples whose flips are made at once


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


def augment_step(manifest: Manifest, config: AugmentConfig, max_pixels: int, store_root: str,
                 manifests_dir: str | Path) -> tuple[Manifest, dict[str, int]]:
    counters: Counter = Counter()
    flipped_manifest = write_manifest(
        augment(read_records(manifest, Sample), config, store_root, max_pixels, counters),
        manifests_dir, "augmented")
    return flipped_manifest, dict(counters)


@task(name="augment", cache_policy=cache_policy(IMAGE_LIBRARIES), persist_result=True)
def augment_task(manifest: Manifest, config: AugmentConfig, max_pixels: int, store_root: str,
                 manifests_dir: str) -> tuple[Manifest, dict[str, int]]:
    return augment_step(manifest, config, max_pixels, store_root, manifests_dir)
