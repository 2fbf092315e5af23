"""The ingest steps: list the source, parse its annotations (VOC or COCO), cut the candidates into
content-defined shards; and the source folder's fingerprint (what "new images landed" means)."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel
from pydantic_core import from_json

from tasks.core.caching import CACHE_POLICY
from tasks.core.config import SourceConfig
from tasks.core.labels import LabelRules
from tasks.core.records import Manifest, ManifestWriter, Rejection, read_lines, write_lines, write_manifest
from tasks.ingest.coco import CocoUnreadable, ingest_coco
from tasks.ingest.inbox import adoptable, ingest_inbox
from tasks.ingest.results import IngestResult
from tasks.ingest.sources import SourceListing, list_source
from tasks.ingest.voc import ingest_voc, parse_memo
from tasks.ingest.voc_outcomes import outcome_chunks, outcome_memo
from tasks.ingest.yolo import ingest_yolo


class IngestOutput(BaseModel, frozen=True):
    fatal: str | None = None  # the source cannot be read at all: the run stops with this line
    several_passes: int = 0  # images whose boxes came from more than one annotation folder
    candidates: Manifest
    rejected: Manifest
    rejected_boxes: Manifest
    boxes_found: int
    images_found: int
    label_spellings: dict[str, int] = {}  # raw class names with their box counts
    # With an adopted inbox: its XMLs read as labels (verified), and those waiting for a person
    inbox: dict[str, int] | None = None


ANNOTATION_SUFFIX = {"voc": ".xml", "coco": ".json", "yolo": ".txt"}


# The listing the ingest's cache key made in a flow run, kept until the ingest takes it: both
# would list the source (2 s each at 100,000 images), and reading one listing the key always
# says what the ingest read; the next run lists again.
_run_listing: dict[str, tuple[str, SourceListing]] = {}


def forget_listing(source: SourceConfig) -> None:
    """Drop the run's listing of `source` (its ingest came back Cached and will not take it)."""
    _run_listing.pop(source.model_dump_json(), None)


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run else None


def list_configured_source(source: SourceConfig, keep: bool = False) -> SourceListing:
    """The source's listing: inside a flow run, the one this run's ingest key kept, if any
    (taken: the ingest is its last reader); `keep`: kept for this run's ingest."""
    run, key = _flow_run_id(), source.model_dump_json()
    kept = _run_listing.pop(key, None) if run is not None else None
    listing = kept[1] if kept is not None and kept[0] == run else \
        list_source(source.images, source.annotations, ANNOTATION_SUFFIX[source.format])
    if run is not None and keep:
        _run_listing[key] = (run, listing)
    return listing


def source_fingerprint(source: SourceConfig, keep: bool = False) -> str:
    """Changes whenever a file under the source is added, removed or written (even at the same
    size with its mtime set back: `sources.stat_line`), and with an adopted inbox, whenever a
    verified XML there (or its image) is. `keep`: its listing is kept for this run's ingest."""
    main = list_configured_source(source, keep).fingerprint
    if source.verified_inbox is None:
        return main
    return hashlib.sha256(f"{main}\n{adoptable(source.verified_inbox).listing.fingerprint}"
                          .encode()).hexdigest()


@dataclass
class SourceState(CachePolicy):
    """Adds the source folder's fingerprint (names and stats) to the key: new images -> miss.
    Build it with `argument=` by keyword: CachePolicy's own first field is `key_storage`."""

    argument: str = "source"

    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        return source_fingerprint(inputs[self.argument], keep=True)  # for the ingest itself


def ingest_step(source: SourceConfig, rules: LabelRules, manifests_dir: str | Path,
                labels: list[str] | None = None, store_root: str | Path | None = None) -> IngestOutput:
    """Parse the source's annotations into candidate samples (streamed to a manifest) and
    rejections. A COCO file that cannot be read at all is `fatal` (it is the whole dataset);
    `labels` name YOLO's class ids where there is no classes.txt. With a content store, VOC
    files parsed, and items made, in an earlier run are taken from its memos."""
    listing = list_configured_source(source)
    missing = [p for p in source.annotation_paths if not p.is_dir()]
    fatal, inbox = None, None
    memos = (parse_memo(store_root), outcome_memo(store_root, rules)) \
        if store_root is not None else (None, None)
    with ManifestWriter(manifests_dir, "candidates") as candidates:  # streamed as parsed
        result = IngestResult()
        if source.format == "coco":
            try:
                result = ingest_coco(source.images, source.annotations, listing, rules,
                                     candidates.add)
            except CocoUnreadable as exc:
                fatal = str(exc)
        elif missing:
            result.rejected += [Rejection(item=str(p), reason="annotation_missing",
                                          detail=f"the {source.format.upper()} annotations "
                                          "folder does not exist") for p in missing]
        elif source.format == "yolo":
            result = ingest_yolo(source.images, source.annotations, listing, labels, rules,
                                 candidates.add)
        else:
            result = ingest_voc(source.images, source.annotation_paths, listing, rules,
                                candidates.add_line, *memos,
                                outcome_chunks(store_root, rules) if store_root is not None else None)
        if source.verified_inbox is not None and fatal is None:
            adopted, found = ingest_inbox(source.verified_inbox, rules, candidates.add_line, *memos)
            result.merge(adopted)
            inbox = {"xmls_read": len(found.listing.annotations), "waiting": found.waiting}
        for memo in filter(None, memos):
            memo.save()
    return IngestOutput(
        fatal=fatal, several_passes=result.several_passes,
        candidates=candidates.manifest,
        rejected=write_manifest(result.rejected, manifests_dir, "ingest-rejected"),
        rejected_boxes=write_manifest(result.rejected_boxes, manifests_dir, "ingest-rejected-boxes"),
        boxes_found=result.boxes_found,
        images_found=candidates.count + len(result.rejected),
        label_spellings=dict(sorted(result.spellings.items())), inbox=inbox,
    )


# A night's image tasks, at most (about): Prefect's own cost is ~4-7 ms a task run, Cached or
# not, so 100,000 images in shards of 256 spent ~3 s a night on ~400 runs that were all Cached.
MAX_SHARDS = 128


def shard_size_for(shard_size: int, images: int) -> int:
    """`shard_size`, doubled until `images` make at most ~MAX_SHARDS shards. A doubled size's
    boundaries are a subset of the smaller one's (hash 0 modulo 2n is 0 modulo n), so when a
    line grows past a step its shards merge pairwise; that night every image task runs once
    again, answered from the per-image memos."""
    size = shard_size
    while images > MAX_SHARDS * size:
        size *= 2
    return size


def shard_step(candidates: Manifest, shard_size: int, manifests_dir: str | Path) -> list[Manifest]:
    """Content-defined shards: items in name order, a shard closing after any item whose hash is
    0 modulo the shard size (`shard_size_for`: the size on average). A boundary depends only on
    its own item, so new images change only the shards they fall into and every other shard
    stays Cached. Only (item, raw line) pairs are held, not parsed records."""
    size = shard_size_for(shard_size, candidates.count)
    groups: list[list[str]] = [[]]
    for item, line in sorted((from_json(line)["item"], line) for line in read_lines(candidates)):
        groups[-1].append(line)
        if zlib.crc32(item.encode()) % size == 0 or len(groups[-1]) >= 4 * size:
            groups.append([])
    return [write_lines(group, manifests_dir, "shard") for group in filter(None, groups)]


@task(name="source-fingerprint")
def source_fingerprint_task(source: SourceConfig) -> str:
    return source_fingerprint(source)


# SourceState: a file added, removed or touched under the source means a new ingest.
@task(name="ingest", cache_policy=CACHE_POLICY + SourceState(argument="source"), persist_result=True)
def ingest_task(source: SourceConfig, rules: LabelRules, manifests_dir: str,
                labels: list[str] | None = None, store_root: str | None = None) -> IngestOutput:
    return ingest_step(source, rules, manifests_dir, labels, store_root)


@task(name="shard", cache_policy=CACHE_POLICY, persist_result=True)
def shard_task(candidates: Manifest, shard_size: int, manifests_dir: str) -> list[Manifest]:
    return shard_step(candidates, shard_size, manifests_dir)
