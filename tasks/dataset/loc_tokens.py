"""Florence-2's location codec and `<OD>` target strings.

encode: q = clamp(floor(x / (W / 1000)), 0, 999); decode: the bin centre (q + 0.5) * W / 1000,
W and H being the original image size. transformers' `Florence2PostProcessor.dequantize`
computes the same centre and then truncates it with `.int()`; `decode_like_processor` does that
too, so the two can be compared exactly (tests/training/test_models.py), while evaluation uses the
untruncated centre (truncation would pull every box up to a pixel towards the origin).
"""

from __future__ import annotations

import math
from pathlib import Path

from prefect import task

from tasks.core.caching import CACHE_POLICY
from tasks.core.code_versions import closure_version
from tasks.core.memo import ChunkMemo, LineMemo, remembered_map
from tasks.core.records import (
    Box,
    Manifest,
    ManifestWriter,
    Sample,
    read_lines,
    read_records,
    write_manifest,
)

BINS = 1000
OD_PROMPT = "<OD>"


def encode_coord(value: float, size: float) -> int:
    return min(max(math.floor(value / (size / BINS)), 0), BINS - 1)


def decode_coord(q: int, size: float) -> float:
    return (q + 0.5) * size / BINS


def decode_like_processor(q: int, size: float) -> int:
    return int(decode_coord(q, size))


def encode_box(box: Box, width: float, height: float) -> tuple[int, int, int, int]:
    return (encode_coord(box.x1, width), encode_coord(box.y1, height),
            encode_coord(box.x2, width), encode_coord(box.y2, height))


def decode_box(q: tuple[int, int, int, int], width: float, height: float,
               label: str = "") -> Box:
    return Box(x1=decode_coord(q[0], width), y1=decode_coord(q[1], height),
               x2=decode_coord(q[2], width), y2=decode_coord(q[3], height), label=label)


def od_target(boxes: list[Box], width: int, height: int) -> str:
    """`label<loc_x1><loc_y1><loc_x2><loc_y2>` per box, in reading order (top to bottom, then
    left to right, on the quantized values, so the order is what the model sees)."""
    coded = sorted(((encode_box(b, width, height), b.label) for b in boxes),
                   key=lambda item: (item[0][1], item[0][0], item[0][3], item[0][2], item[1]))
    return "".join(label + "".join(f"<loc_{q}>" for q in quad) for quad, label in coded)


def with_target(sample: Sample) -> Sample:
    """A sliced test image has no target of its own: it is too long to learn, and never learnt."""
    target = None if sample.sliced else od_target(sample.boxes, sample.width, sample.height)
    return sample.model_copy(update={"target": target})


def loc_targets_step(manifest: Manifest, manifests_dir: str | Path,
                     store_root: str | Path | None = None) -> Manifest:
    """Every record with its target, streamed; with a content store, a record seen before
    (same code: this module and what it imports) takes its remembered line instead of being
    parsed and written again."""
    if store_root is None:
        return write_manifest(map(with_target, read_records(manifest, Sample)), manifests_dir,
                              "targets")
    key = closure_version(("dataset/loc_tokens.py",))
    memo = LineMemo(store_root, "loc-targets", key)

    def make(chunk: list[str]) -> tuple[list[str], dict]:
        return list(remembered_map(chunk, memo, lambda line: [
            with_target(Sample.model_validate_json(line)).model_dump_json()])), {}

    with ManifestWriter(manifests_dir, "targets") as out:
        for outputs, _, _ in ChunkMemo(store_root, "loc-targets", key).map(read_lines(manifest), make):
            out.add_lines(outputs)
    memo.save()
    return out.manifest


@task(name="loc-targets", cache_policy=CACHE_POLICY, persist_result=True)
def loc_targets_task(manifest: Manifest, manifests_dir: str, store_root: str | None = None) -> Manifest:
    return loc_targets_step(manifest, manifests_dir, store_root)
