"""What each VOC item made in an earlier run, remembered under the state of its XML files.

An item whose XML files are unchanged (path, size, mtime, ctime, inode: as git trusts its index)
and whose image is the same file, unchanged, is not parsed, converted or serialized again: its
Sample line and its refused boxes come back as they were. The image is looked up again as the
full path would (the folder may have gained a better match, a link may now lead out), so only
the work is skipped, never a check. The label rules and the code version key the memo.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tasks.core.code_versions import closure_version
from tasks.core.labels import LabelRules
from tasks.core.memo import ChunkMemo, LineMemo
from tasks.core.records import Rejection
from tasks.ingest.results import IngestResult
from tasks.ingest.sources import PathOutsideSource, SourceListing, find_image, stat_line, stem_of


def _memo_key(rules: LabelRules) -> str:
    allowed = list(rules.allowed) if rules.allowed is not None else None  # sorted already
    return json.dumps([closure_version(("ingest/voc.py",)), rules.label_map,
                       rules.merge_case_variants, allowed], sort_keys=True)


def outcome_memo(store_root: str | Path, rules: LabelRules) -> LineMemo:
    """Items made by the VOC reader, keyed on the code that makes them (the reader and what it
    imports), not the whole package: an edit in a later stage keeps them."""
    return LineMemo(store_root, "voc-samples", _memo_key(rules))


def outcome_chunks(store_root: str | Path, rules: LabelRules) -> ChunkMemo:
    """In front of `outcome_memo`: what a whole chunk of items made (`chunk_entry`), by the
    digests of their keys (`item_key`), so that a night's unchanged items come back a chunk at
    a time, with their images checked again (`SeenImage`) but no look-up per item."""
    return ChunkMemo(store_root, "voc-samples", _memo_key(rules))


class SeenImage(NamedTuple):
    """Where an item's image was found, and its state then: what `still_its_image` checks."""

    filename: str | None
    path_hint: str | None
    image: str
    image_state: str


def chunk_entry(outcomes: list[Outcome]) -> tuple[list[str], dict]:
    """A chunk's memo entry: its Sample lines then its refused boxes' lines; the extras say how
    many Samples, each item's `SeenImage` and the chunk's counts."""
    spellings: Counter = Counter()
    for outcome in outcomes:
        spellings.update(outcome.spellings)
    lines = [o.line for o in outcomes] + [line for o in outcomes for line in o.rejected_boxes]
    return lines, {"samples": len(outcomes),
                   "images": [list(seen_image(o)) for o in outcomes],
                   "boxes_found": sum(o.boxes_found for o in outcomes),
                   "spellings": dict(spellings)}


def seen_image(outcome: Outcome) -> SeenImage:
    return SeenImage(outcome.filename, outcome.path_hint, outcome.image, outcome.image_state)


def item_key(item: str, files: list[tuple[Path, str]], listing: SourceListing) -> str | None:
    """The item and the states of its XML files; None where one is not inside its folder or
    cannot be stat'ed (the full path then says why)."""
    parts = [item + "\n"]
    try:
        for root, xml_path in files:
            listing.check_inside(root, xml_path)
            parts.append(stat_line(xml_path, listing.stat(xml_path)))
    except (PathOutsideSource, OSError):
        return None
    return "".join(parts)


@dataclass
class Outcome:
    line: str  # the Sample, as its manifest line
    rejected_boxes: list[str]  # Rejection lines
    filename: str | None  # what the XML said, to look the image up again
    path_hint: str | None
    image: str
    image_state: str  # the image's stat_line when the item was made
    boxes_found: int
    spellings: dict[str, int]


def recall(memo: LineMemo, key: str) -> Outcome | None:
    hit = memo.get(key)
    if hit is None:
        return None
    lines, extras = hit
    try:
        return Outcome(line=lines[0], rejected_boxes=lines[1:], **extras)
    except (TypeError, IndexError):  # an entry of another shape: make it again
        return None


def remember(memo: LineMemo, key: str, outcome: Outcome) -> None:
    extras = {name: value for name, value in vars(outcome).items()
              if name not in ("line", "rejected_boxes")}
    memo.put(key, [outcome.line, *outcome.rejected_boxes], extras)


def still_its_image(outcome: Outcome | SeenImage, rel_folder: str, stem: str, index: dict[str, str],
                    claimed: dict[str, str], images_root: Path, listing: SourceListing) -> str | None:
    """The remembered image, if the lookup still finds it, unclaimed, inside the source and
    unchanged; else None (the item is made again)."""
    try:
        image = find_image(outcome.filename, rel_folder, stem, index, outcome.path_hint)
        if image is None or image != outcome.image or image in claimed:
            return None
        listing.check_inside(images_root, image)
        state = listing.stat(image)
    except (PathOutsideSource, OSError):
        return None
    if stat_line(image, state) != outcome.image_state:
        return None
    return image


def rejections(lines: list[str]) -> list[Rejection]:
    return [Rejection.model_validate_json(line) for line in lines]


def take_chunk(lines: list[str], extras: dict, members: list[tuple[str, list, str | None]],
                result: IngestResult, keep: Callable[[str], None], index: dict[str, str],
                claimed: dict[str, str], images_root: Path, listing: SourceListing) -> bool:
    """A remembered chunk's items kept, if each one's image is still its own (looked up again,
    unclaimed, inside the source and unchanged); False, with nothing kept, if any is not."""
    try:
        seen = [SeenImage(*entry) for entry in extras["images"]]
        samples, boxes_found, spellings = extras["samples"], extras["boxes_found"], extras["spellings"]
    except (KeyError, TypeError):  # an entry of another shape: made again
        return False
    if samples != len(members) or len(seen) != len(members):
        return False
    taken: dict[str, str] = {}
    for (item, files, _), image in zip(members, seen, strict=True):
        found = still_its_image(image, posixpath.dirname(item), stem_of(files[0][1]), index,
                                claimed, images_root, listing)
        if found is None or found in taken:
            return False
        taken[found] = item
    claimed.update(taken)
    result.several_passes += sum(len(files) > 1 for _, files, _ in members)
    result.boxes_found += boxes_found
    result.spellings.update(spellings)
    result.rejected_boxes += rejections(lines[samples:])
    for line in lines[:samples]:
        keep(line)
    return True
