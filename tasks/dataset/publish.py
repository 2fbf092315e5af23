"""Publish: parquet shards in the Hub's layout (`data/<split>-*.parquet` + a dataset card), written
to a local folder that `datasets.load_dataset(folder)` reads, and optionally uploaded to the Hub.

Rows are streamed into the parquet writer in small row groups, so memory does not grow with the
dataset. The token comes from HF_TOKEN through huggingface_hub itself and is never logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel
from pydantic_core import from_json, to_json

from tasks.core.caching import CACHE_POLICY, PUBLISH_LIBRARIES, cache_policy
from tasks.core.config import PublishConfig
from tasks.core.records import Manifest, read_lines
from tasks.core.retry import with_backoff
from tasks.core.splits import SPLITS
from tasks.dataset.loc_tokens import OD_PROMPT
from tasks.dataset.parquet_files import (
    dataset_schema,
    file_groups,
    files_by_digest,
    group_digest,
    link,
    swap_in,
)
from tasks.images.store import dataset_image_bytes

ROWS_PER_GROUP = 64  # rows per parquet row group: what the writer holds at once

def to_row(line: str) -> dict:
    """A parquet row from one manifest line. Lines are read as plain JSON: they were written
    from Samples, and pydantic would only check them again (string paths too: pathlib's parsing
    cost as much as the rest of a row)."""
    sample = from_json(line)
    image_path = sample["processed_path"] or sample["image_path"]  # Sample.dataset_image
    augmentation = sample["augmentation"]
    image_bytes = dataset_image_bytes(sample)  # (a derived image lost from the store: made again)
    boxes = sample["boxes"]
    return {
        "image": {"bytes": image_bytes,
                  "path": posixpath.splitext(posixpath.basename(sample["item"]))[0]
                  + os.path.splitext(image_path)[1]},
        "image_id": sample["item"] + ("" if augmentation == "none" else f"#{augmentation}"),
        "source_id": sample["tile_of"] or sample["item"],
        "sha256": sample["sha256"],
        "width": sample["width"],
        "height": sample["height"],
        "boxes": [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes],
        "labels": [b["label"] for b in boxes],
        "difficult": [b["difficult"] for b in boxes],
        "augmentation": augmentation,
        "prompt": OD_PROMPT,
        "target": sample["target"] or "",
        "tile": list(sample["tile"] or ()),
        "sliced": sample["sliced"],
    }


def _write_file(lines: list[str], path: Path) -> None:
    # Rows go to arrow as they are: `to_row` already gives each column its stored form (the image
    # as {"bytes", "path"}), so `FEATURES.encode_example` would only walk them again (a tenth of
    # prep's time on small images). Loading the files through `datasets` is tested.
    schema, dictionary = dataset_schema()
    with pq.ParquetWriter(path, schema, use_dictionary=dictionary) as writer:
        for start in range(0, len(lines), ROWS_PER_GROUP):
            rows = [to_row(line) for line in lines[start:start + ROWS_PER_GROUP]]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def dataset_card(name: str, counts: dict[str, int], classes: dict[str, int], fingerprint: str) -> str:
    configs = {
        "configs": [{
            "config_name": "default",
            # The fingerprint in the file names keeps `datasets`' cache honest: it keys a local
            # folder's cache on these patterns, so two datasets with equal patterns would share it.
            # `datasets` cannot load an empty parquet split, so empty splits are left out.
            "data_files": [{"split": s, "path": f"data/{s}-{fingerprint[:12]}-*"}
                           for s in SPLITS if counts.get(s)],
        }],
        "task_categories": ["object-detection"],
        "tags": ["defectflow", "florence-2"],
    }
    lines = ["---", json.dumps(configs, indent=1), "---", "",  # JSON is valid YAML
             f"# {name}", "",
             "Object-detection dataset prepared by defectflow for Florence-2 fine-tuning: "
             "the `target` column holds `label<loc_x1><loc_y1><loc_x2><loc_y2>` per box for the "
             "`<OD>` prompt; `boxes` are float pixels, 0-based, x2/y2 exclusive.", "",
             "| split | rows |", "|---|---|"]
    lines += [f"| {s} | {counts.get(s, 0)} |" for s in SPLITS]
    if not all(counts.get(s) for s in SPLITS):
        lines += ["", "Empty splits have no data file (`datasets` cannot load an empty split)."]
    lines += ["", "| class | boxes |", "|---|---|"]
    lines += [f"| {label} | {n} |" for label, n in sorted(classes.items())]
    lines += ["", f"Fingerprint: `{fingerprint}`", ""]
    return "\n".join(lines)


def write_local(records_by_split: dict[str, Callable[[], Iterable[tuple[str, str, int]]]],
                folder: str | Path, name: str, classes: dict[str, int],
                fingerprint: str, workers: int | None = None) -> tuple[dict[str, int], Counter]:
    """Write the Hub layout into `folder` (replaced atomically), each split's records given as
    (item, manifest line, image bytes). A parquet file whose rows did not change since the
    publication being replaced is hard-linked from it, not written again (its records are not
    even parsed); the others are written on `workers` threads (pyarrow encodes and compresses
    without the GIL). Returns rows per split and the files written / reused."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    previous = files_by_digest(folder)
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    (staging / "data").mkdir(parents=True)
    counts, files = {}, Counter()
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        writing: deque[Future] = deque()
        for split in SPLITS:
            counts[split] = 0
            for index, group in enumerate(file_groups(records_by_split[split]())):
                digest = group_digest(group)
                path = staging / "data" / f"{split}-{fingerprint[:12]}-{index:05d}-{digest}.parquet"
                if digest in previous and link(previous[digest], path):
                    files["parquet_reused"] += 1
                else:
                    writing.append(pool.submit(_write_file, [line for _, line, _ in group], path))
                    files["parquet_written"] += 1
                    while len(writing) > workers:  # files in flight: memory stays flat
                        writing.popleft().result()
                counts[split] += len(group)
        for future in writing:
            future.result()
    (staging / "README.md").write_text(dataset_card(name, counts, classes, fingerprint),
                                       encoding="utf-8")
    swap_in(staging, folder)
    return counts, files


def push_to_hub(folder: str | Path, repo_id: str, private: bool, api=None,
                sleep: Callable[[float], None] = time.sleep,
                log: Callable[[str], None] = print) -> str:
    """Upload the published folder as one commit; returns the commit id (the Hub revision)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()  # reads HF_TOKEN itself; we never touch or print it
    with_backoff(lambda: api.create_repo(repo_id, repo_type="dataset", private=private,
                                         exist_ok=True), sleep=sleep, log=log)
    commit = with_backoff(lambda: api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
        commit_message="defectflow prepare", delete_patterns=["data/*"]), sleep=sleep, log=log)
    return str(getattr(commit, "oid", None) or commit)


class PublishOutput(BaseModel, frozen=True):
    folder: str
    rows: dict[str, int]
    fingerprint: str
    hub_revision: str | None = None
    files: dict[str, int] = {}  # parquet_written / parquet_reused (unchanged since last time)


def read_manifest_once(manifest: Manifest) -> tuple[str, dict[str, int], list[tuple[str, str, int]]]:
    """One pass: a hash of what the dataset says (content hashes, boxes, splits, targets,
    rendering), not of where files happen to live, so the same data prepared anywhere has the
    same fingerprint; the boxes per class of the original (unflipped) images; and each line's
    (split, item, image bytes), so that the writer can route lines without parsing them again.
    Lines are read as plain JSON (as in `to_row`), by pydantic-core's parser and serializer
    (Rust: a third of the time of the json module's)."""
    digest = hashlib.sha256()
    classes: Counter = Counter()
    where: list[tuple[str, str, int]] = []
    for line in read_lines(manifest):
        sample = from_json(line)
        boxes = sample["boxes"]
        digest.update(to_json([
            sample["item"], sample["sha256"], sample["width"], sample["height"], sample["split"],
            sample["augmentation"], sample["image_op"], sample["target"],
            [[b["x1"], b["y1"], b["x2"], b["y2"], b["label"], b["difficult"], b["truncated"]]
             for b in boxes],
        ]))
        if sample["augmentation"] == "none":
            classes.update(box["label"] for box in boxes)
        where.append((sample["split"], sample["item"], sample["file_size"]))
    return digest.hexdigest()[:32], dict(classes), where


# The pass of the fingerprint step, kept for the publish step that follows it in the same run
# (one entry, taken by the publish): a night reads every line's JSON once, not twice.
_last_pass: dict[Manifest, tuple[str, dict[str, int], list[tuple[str, str, int]]]] = {}


def fingerprint_and_classes(manifest: Manifest) -> tuple[str, dict[str, int]]:
    read = read_manifest_once(manifest)
    _last_pass.clear()
    _last_pass[manifest] = read
    return read[0], read[1]


def manifest_pass(manifest: Manifest) -> tuple[str, dict[str, int], list[tuple[str, str, int]]]:
    """`read_manifest_once`, taken from the fingerprint step's pass when it read this manifest."""
    kept = _last_pass.pop(manifest, None)
    return kept if kept is not None else read_manifest_once(manifest)


def records_of_split(manifest: Manifest, split: str,
                     where: list[tuple[str, str, int]]) -> Iterator[tuple[str, str, int]]:
    """(item, line, image bytes) of the split's records, in manifest order (`where` from
    read_manifest_once)."""
    for line, (line_split, item, size) in zip(read_lines(manifest), where, strict=True):
        if line_split == split:
            yield item, line, size


def publish_step(manifest: Manifest, name: str, config: PublishConfig, out_dir: str | Path,
            api=None) -> PublishOutput:
    fingerprint, classes, where = manifest_pass(manifest)

    def split_reader(split: str) -> Callable[[], Iterable[tuple[str, str, int]]]:
        return lambda: records_of_split(manifest, split, where)

    folder = Path(out_dir)
    rows, files = write_local({s: split_reader(s) for s in SPLITS}, folder, name, classes,
                              fingerprint)
    revision = None
    if config.target == "hub":
        revision = push_to_hub(folder, config.repo_id or "", config.private, api=api)
    return PublishOutput(folder=str(folder), rows=rows, fingerprint=fingerprint,
                         hub_revision=revision, files=dict(files))


def is_published(out_dir: str | Path, fingerprint: str | None = None) -> bool:
    """The folder holds a complete publication (of that fingerprint, when given)."""
    card = Path(out_dir) / "README.md"
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8")
    patterns = re.findall(r'"path": "(data/[^"]+)"', text)
    if not all(list(Path(out_dir).glob(pattern)) for pattern in patterns):
        return False
    return fingerprint is None or fingerprint in text


@task(name="publish", cache_policy=cache_policy(PUBLISH_LIBRARIES), persist_result=True,
      retries=2, retry_delay_seconds=[10, 60])
def publish_task(manifest: Manifest, name: str, config: PublishConfig, out_dir: str) -> PublishOutput:
    return publish_step(manifest, name, config, out_dir)


def fingerprint_step(manifest: Manifest) -> str:
    """The fingerprint of the dataset `publish_step` would publish from `manifest`."""
    return fingerprint_and_classes(manifest)[0]


# A function of the manifest's content (its digest is in the key): reused even where the file
# has gone since, and read in a task, never in the flow itself.
@task(name="dataset-fingerprint", cache_policy=CACHE_POLICY, persist_result=True)
def fingerprint_task(manifest: Manifest) -> str:
    return fingerprint_step(manifest)


def publish_task_for(out_dir: str | Path, fingerprint: str):
    """The publish task, cached like every step but run again when its output folder is gone or
    holds another dataset (another run published there since): the folder must match the
    `fingerprint` of what this run would publish (`fingerprint_task`)."""
    return publish_task.with_options(refresh_cache=not is_published(out_dir, fingerprint))


def dataset_fingerprint_of(dataset_dir: str | Path) -> str:
    """The fingerprint `prepare` wrote into the dataset card (part of the train and evaluate keys)."""
    card = (Path(dataset_dir) / "README.md").read_text(encoding="utf-8")
    match = re.search(r"Fingerprint: `([0-9a-f]+)`", card)
    if not match:
        raise ValueError(f"{dataset_dir} has no defectflow fingerprint: was it made by `prepare`?")
    return match.group(1)
