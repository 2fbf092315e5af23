"""The image step for a shard of candidates: inspect (memoized), fit boxes, apply the grayscale
policy, and render the training images' flips while their pixels are decoded."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.core import progress
from tasks.core.caching import IMAGE_LIBRARIES, cache_policy
from tasks.core.code_versions import closure_version
from tasks.core.memo import LineMemo
from tasks.core.records import Manifest, read_lines, write_lines
from tasks.images.sample import OUTPUT_LISTS, ImageStepConfig, LineOutcome
from tasks.images.store import ContentStore, pillow_key
from tasks.images.workers import outcomes


def as_reused(counters: dict[str, int]) -> Counter:
    """Work remembered from an earlier run, as work done by no one now: what it decoded or
    encoded then counts as reused."""
    reused = Counter(counters)
    reused["images_reused"] += reused.pop("images_decoded", 0)
    reused["encodes_reused"] += reused.pop("images_encoded", 0)
    return Counter({k: v for k, v in reused.items() if v})


# The code whose answers the memos hold: this step and what it imports (the sample step, the
# content store, the records), not the whole package: an edit elsewhere keeps them.
SHARD_CODE = ("images/shard.py",)


def sample_memo(config: ImageStepConfig, store_root: str | Path) -> LineMemo:
    """What the step made of each candidate line (which names its image's path, size and mtime,
    as `make` judges a file, with its boxes): a shard re-run because a new image fell into it
    opens none of the images it had."""
    return LineMemo(store_root, "images", "|".join([config.model_dump_json(),
                                                    closure_version(SHARD_CODE), pillow_key()]))


def process_shard(lines: list[str], config: ImageStepConfig, store_root: str | Path,
                  on_image: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """The shard's output lines (OUTPUT_LISTS, plus the counters): each candidate line answered
    from the memo, the others processed (on the image workers when there are enough of them)
    and remembered."""
    memo = sample_memo(config, store_root)
    answers: list[LineOutcome | None] = []
    for line in lines:
        hit = memo.get(line)
        answers.append(LineOutcome(made=list(zip(hit[1]["lists"], hit[0], strict=True)),
                                   counters=dict(as_reused(hit[1]["counters"])), memoable=False,
                                   paths=[]) if hit is not None else None)
        if hit is not None and on_image is not None:
            on_image()
    misses = [line for line, answer in zip(lines, answers, strict=True) if answer is None]
    made = iter(outcomes(misses, config, store_root, on_image))
    outputs: dict[str, list[str]] = {name: [] for name in OUTPUT_LISTS}
    counters: Counter = Counter()
    for line, answer in zip(lines, answers, strict=True):
        if answer is None:
            answer = next(made)
            if answer.memoable:
                memo.put(line, [out for _, out in answer.made], {
                    "lists": [name for name, _ in answer.made], "counters": answer.counters,
                    "paths": answer.paths})
        for name, out in answer.made:
            outputs[name].append(out)
        counters.update(answer.counters)
    memo.save()
    return {**outputs, "counters": counters}


class ShardOutput(BaseModel, frozen=True):
    kept: Manifest
    dropped_grayscale: Manifest
    rejected: Manifest
    rejected_boxes: Manifest
    counters: dict[str, int]


def _shard_memo(shard: Manifest, config: ImageStepConfig, store_root: str | Path,
                manifests_dir: str | Path) -> Path:
    """Where the output of this shard under this config is remembered. The shard's digest
    covers each image's path, size and mtime (as `make` judges a file), its boxes and declared
    size; the step's code (SHARD_CODE) and Pillow's version cover how the answer was computed."""
    key = hashlib.sha256("|".join([shard.digest, config.model_dump_json(), str(manifests_dir),
                                   closure_version(SHARD_CODE), pillow_key()]).encode())
    name = key.hexdigest()[:32]
    return Path(store_root) / "shards" / name[:2] / f"{name}.json"


def remembered(memo: Path) -> ShardOutput | None:
    """The output remembered in `memo`, as work done by no one (`as_reused`). None if there is
    none (or its manifests are gone)."""
    if not memo.is_file():
        return None
    output = ShardOutput.model_validate_json(memo.read_bytes())
    manifests = (output.kept, output.dropped_grayscale, output.rejected, output.rejected_boxes)
    if not all(Path(m.path).is_file() for m in manifests):
        return None
    return output.model_copy(update={"counters": dict(as_reused(output.counters))})


def process_images_step(shard: Manifest, config: ImageStepConfig, store_root: str | Path,
                       manifests_dir: str | Path) -> ShardOutput:
    """The shard's images inspected and rendered; a shard seen before (same images, same
    config) is answered from its memo without opening an image, with or without Prefect, and
    so is each image seen before in a shard that changed."""
    memo = _shard_memo(shard, config, store_root, manifests_dir)
    if (known := remembered(memo)) is not None:
        return known
    made = process_shard(list(read_lines(shard)), config, store_root, on_image=progress.advance)
    output = ShardOutput(
        kept=write_lines(made["kept"], manifests_dir, "kept"),
        dropped_grayscale=write_lines(made["dropped_grayscale"], manifests_dir, "dropped-gray"),
        rejected=write_lines(made["rejected"], manifests_dir, "rejected"),
        rejected_boxes=write_lines(made["rejected_boxes"], manifests_dir, "rejected-boxes"),
        counters=dict(made["counters"]),
    )
    ContentStore(store_root).write(memo, output.model_dump_json().encode())
    return output


@task(name="process-images", cache_policy=cache_policy(IMAGE_LIBRARIES), persist_result=True)
def process_images_task(shard: Manifest, config: ImageStepConfig, store_root: str,
                       manifests_dir: str) -> ShardOutput:
    return process_images_step(shard, config, store_root, manifests_dir)
