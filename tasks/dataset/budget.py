"""Every target fits the decoder: its length measured in the model tokenizer's tokens, and dense
images cut into tiles (`tiling`) where one target cannot hold them.

Florence-2's BART decoder has 1024 positions; a dense image (PCB, additive manufacturing: 50-300
small defects, six tokens or more each) writes a longer target, which training would truncate
(the model learns to stop mid-list) or crash on. Such an image is quarantined as
`target_too_long`, never silently cut. Lengths are exact with the model's own tokenizer when it
is on this machine; otherwise an upper bound: byte-level BPE (BART's, so Florence-2's) spends at
most one token per UTF-8 byte, and each `<loc_N>` is one token.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from tasks.core.caching import IMAGE_LIBRARIES, cache_policy, library_versions
from tasks.core.code_versions import closure_version
from tasks.core.config import TilingConfig
from tasks.core.memo import ChunkMemo, LineMemo, content_chunks
from tasks.core.records import (
    Manifest,
    ManifestWriter,
    Rejection,
    Sample,
    box_rejections,
    read_lines,
)
from tasks.dataset.loc_tokens import od_target
from tasks.images.store import ContentStore, derived_image, pillow_key
from tasks.images.tiles import boxes_in_window, tile_windows

LOC_TOKEN = re.compile(r"<loc_\d+>")
BYTE_BOUND = "utf-8 bytes (an upper bound for byte-level BPE)"
# The files a tokenizer is loaded from (those of any kind `AutoTokenizer` reads).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "sentencepiece.bpe.model",
                   "spiece.model")
# The code whose answers the memo holds: this step and what it imports (targets, tiles, the
# content store), not the whole package: an edit elsewhere keeps them.
BUDGET_CODE = ("dataset/budget.py",)


class TargetsCheck(BaseModel, frozen=True):
    rows: Manifest  # what the dataset is made of: whole images and tiles
    images: Manifest  # the kept images, whole (what the report counts)
    rejected: Manifest
    rejected_boxes: Manifest
    stats: dict


def tokenizer_files(checkpoint: str) -> list[Path]:
    """The checkpoint's tokenizer files on this machine (in its folder, or in the Hub cache's
    snapshot of it), none when it is not here (`tiny` is built at training time), looked up
    without loading transformers: prep stays light (~300 MiB, not ~900 with torch)."""
    folder = Path(checkpoint)
    if checkpoint == "tiny":
        return []
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(checkpoint, "tokenizer_config.json")
        except (ValueError, OSError):  # not a repo id
            return []
        if not isinstance(found, str):
            return []
        folder = Path(found).parent
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def tokenizer_key(checkpoint: str) -> str:
    """What the counts depend on besides the targets: the byte bound while the checkpoint's
    tokenizer is not here, its files' content (and the tokenizer libraries) once it is, e.g.
    after a first training downloaded the checkpoint: then the counts become exact."""
    files = tokenizer_files(checkpoint)
    if not files:
        return BYTE_BOUND
    digest = hashlib.sha256(repr(sorted(library_versions(("tokenizers", "transformers")).items()))
                            .encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


@dataclass
class TokenizerFiles(CachePolicy):
    """Adds `tokenizer_key` of the task's checkpoint argument: a cached budget counted by the
    byte bound is not reused once the exact tokenizer is here. Build it with `argument=`."""

    argument: str = "checkpoint"

    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        return tokenizer_key(inputs[self.argument])


def target_tokenizer(checkpoint: str):
    """(the checkpoint's tokenizer, its name), or (None, BYTE_BOUND) when it is not on this
    machine (a Hub id never downloaded; `tiny`, built at training time): never a download."""
    if not tokenizer_files(checkpoint):
        return None, BYTE_BOUND
    from transformers import AutoTokenizer  # (it brings torch: only when there is a tokenizer)

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError):
        return None, BYTE_BOUND
    return tokenizer, f"{checkpoint} tokenizer"


def target_tokens(target: str, tokenizer=None) -> int:
    """Decoder positions the target takes, `<s>` and `</s>` included."""
    if tokenizer is not None:
        return len(tokenizer(target).input_ids)
    return len(LOC_TOKEN.findall(target)) + len(LOC_TOKEN.sub("", target).encode()) + 2


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def cut_into_tiles(sample: Sample, tiling: TilingConfig, store: ContentStore,
                   max_pixels: int, min_box_size: float) -> list[Sample]:
    """The sample's tiles, their pixels made once per (image, window) in the content store."""
    tiles = []
    for window in tile_windows(sample.width, sample.height, tiling.size, tiling.overlap):
        op = "+".join(filter(None, [sample.image_op, "crop-{}-{}-{}-{}".format(*window)]))
        path, _ = derived_image(sample.image_path, sample.sha256, op, sample.image_format,
                                max_pixels, store)
        tiles.append(sample.model_copy(update={
            "item": f"{sample.item}@{window[0]},{window[1]}", "tile_of": sample.item,
            "tile": window, "width": window[2], "height": window[3], "image_op": op,
            "processed_path": path,
            "boxes": boxes_in_window(sample.boxes, window, tiling.min_visible, min_box_size)}))
    return tiles


def _covered(sample: Sample, tiles: list[Sample]) -> list[bool]:
    """Which of the sample's boxes some tile kept (a box larger than a tile may be in none)."""
    seen = [False] * len(sample.boxes)
    for tile in tiles:
        x, y, _, _ = tile.tile
        for kept in tile.boxes:
            for n, box in enumerate(sample.boxes):
                inside = (box.x1 <= kept.x1 + x and box.y1 <= kept.y1 + y
                          and kept.x2 + x <= box.x2 and kept.y2 + y <= box.y2)
                if inside and box.label == kept.label:
                    seen[n] = True
    return seen


def budget_one(sample: Sample, budget: int, tokens: Callable[[Sample], int],
               tiling: TilingConfig | None, store: ContentStore | None, max_pixels: int,
               min_box_size: float) -> tuple[list[tuple[str, BaseModel]], int, Counter]:
    """One sample against the budget: its records, each tagged with the manifest it goes to
    (rows, images, rejected, rejected_boxes), its target length, and what tiling did."""
    out: list[tuple[str, BaseModel]] = []
    tiled: Counter = Counter()
    length = tokens(sample)

    def quarantine(detail: str) -> None:
        out.append(("rejected", Rejection(item=sample.item, reason="target_too_long", detail=detail)))
        out.extend(("rejected_boxes", box) for box in box_rejections(
            sample.item, len(sample.boxes), "image_rejected", "target_too_long"))

    over = length > budget
    larger = tiling is not None and max(sample.width, sample.height) > tiling.size
    if not (over or (larger and tiling.all_images)):
        return [("rows", sample), ("images", sample)], length, tiled
    detail = f"{length} target tokens ({len(sample.boxes)} boxes), over the {budget} budget"
    if tiling is None or not larger:
        quarantine(detail + ("" if tiling else "; `tiling` would cut it"))
        return out, length, tiled
    if sample.split == "test":
        tiled["sliced_test_images"] += 1
        return [("rows", sample.model_copy(update={"sliced": True})), ("images", sample)], length, tiled
    tiles = cut_into_tiles(sample, tiling, store, max_pixels, min_box_size)
    longest = max(tokens(tile) for tile in tiles)
    if longest > budget:
        quarantine(f"{detail}; its {tiling.size} px tiles still need {longest}")
        return out, length, tiled
    covered = _covered(sample, tiles)
    out += [("rejected_boxes", Rejection(
        item=f"{sample.item}#{n}", reason="box_split_by_tiles",
        detail=f"less than {tiling.min_visible:.0%} of it inside any tile"))
        for n, seen in enumerate(covered) if not seen]
    out += [("rows", tile) for tile in tiles]
    out.append(("images", sample.model_copy(update={
        "boxes": [box for box, kept in zip(sample.boxes, covered, strict=True) if kept]})))
    tiled["images"] += 1
    tiled["tiles"] += len(tiles)
    return out, length, tiled


def budget_step(samples: Manifest, budget: int, checkpoint: str, manifests_dir: str | Path,
                tiling: TilingConfig | None = None, store_root: str | Path | None = None,
                max_pixels: int = 100_000_000, min_box_size: float = 1.0) -> TargetsCheck:
    """Measure every sample's `<OD>` target. Within `budget` tokens it is kept; over it (or
    always, with `tiling.all_images`) a train or validation image is cut into tiles and a test
    image is kept whole, to be scored through tiles; an image whose tiles are still over the
    budget, or any image over it without `tiling`, is quarantined (`target_too_long`). With a
    content store, a sample measured in an earlier run (same settings, same tokenizer) is
    answered from its memo."""
    tokenizer, counted_with = target_tokenizer(checkpoint)
    store = ContentStore(store_root) if tiling and store_root is not None else None
    key = "|".join([str(budget), checkpoint, counted_with, tokenizer_key(checkpoint),
                    tiling.model_dump_json() if tiling else "", str(max_pixels), str(min_box_size),
                    closure_version(BUDGET_CODE), pillow_key()])
    memo = LineMemo(store_root, "budget", key) if store_root is not None else None
    lengths: list[int] = []
    tiled: Counter = Counter({"images": 0, "tiles": 0, "sliced_test_images": 0})

    def tokens(sample: Sample) -> int:
        return target_tokens(od_target(sample.boxes, sample.width, sample.height), tokenizer)

    def measure(line: str) -> tuple[list[str], dict]:
        if memo is not None and (hit := memo.get(line)) is not None:
            return hit
        made, length, made_tiled = budget_one(Sample.model_validate_json(line), budget,
                                              tokens, tiling, store, max_pixels, min_box_size)
        outputs = [record.model_dump_json() for _, record in made]
        extras = {"to": [to for to, _ in made], "length": length, "tiled": made_tiled,
                  "paths": [r.processed_path for to, r in made
                            if to == "rows" and getattr(r, "tile", None)]}
        if memo is not None:
            memo.put(line, outputs, extras)
        return outputs, extras

    def measure_chunk(chunk: list[str]) -> tuple[list[str], dict]:
        """The chunk's records (tagged with their manifests in "to"), lengths and tiling."""
        outputs: list[str] = []
        extras: dict = {"to": [], "lengths": [], "tiled": Counter(), "paths": []}
        for line in chunk:
            made, made_extras = measure(line)
            outputs += made
            extras["to"] += made_extras["to"]
            extras["lengths"].append(made_extras["length"])
            extras["tiled"].update(made_extras["tiled"])
            extras["paths"] += made_extras["paths"]
        return outputs, extras

    chunks = (ChunkMemo(store_root, "budget", key).map(read_lines(samples), measure_chunk)
              if store_root is not None else
              ((*measure_chunk(chunk), False) for chunk in content_chunks(read_lines(samples))))
    with ManifestWriter(manifests_dir, "rows") as rows, \
            ManifestWriter(manifests_dir, "within-budget") as images, \
            ManifestWriter(manifests_dir, "over-budget") as rejected, \
            ManifestWriter(manifests_dir, "over-budget-boxes") as rejected_boxes:
        writers = {"rows": rows, "images": images, "rejected": rejected,
                   "rejected_boxes": rejected_boxes}
        for outputs, extras, _ in chunks:
            for to, out in zip(extras["to"], outputs, strict=True):
                writers[to].add_line(out)
            lengths += extras["lengths"]
            tiled.update(extras["tiled"])
    if memo is not None:
        memo.save()
    stats = {"budget": budget, "counted_with": counted_with, "max_tokens": max(lengths, default=0),
             "p99_tokens": percentile(lengths, 99),
             "over_budget": sum(length > budget for length in lengths), "tiling": dict(tiled)}
    return TargetsCheck(rows=rows.manifest, images=images.manifest, rejected=rejected.manifest,
                        rejected_boxes=rejected_boxes.manifest, stats=stats)


@task(name="target-budget", persist_result=True,
      cache_policy=cache_policy(IMAGE_LIBRARIES) + TokenizerFiles(argument="checkpoint"))
def budget_task(samples: Manifest, budget: int, checkpoint: str, manifests_dir: str,
                tiling: TilingConfig | None = None, store_root: str | None = None,
                max_pixels: int = 100_000_000, min_box_size: float = 1.0) -> TargetsCheck:
    return budget_step(samples, budget, checkpoint, manifests_dir, tiling, store_root,
                       max_pixels, min_box_size)
