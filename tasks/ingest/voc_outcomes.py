"""What each VOC item made in an earlier run, remembered under the state of its XML files.

An item whose XML files are unchanged (path, size, mtime, ctime, inode: as git trusts its index)
and whose image is the same file, unchanged, is not parsed, converted or serialized again: its
Sample line and its refused boxes come back as they were. The image is looked up again as the
full path would (the folder may have gained a better match, a link may now lead out), so only
the work is skipped, never a check. The label rules and the code version key the memo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.core.code_versions import closure_version
from tasks.core.labels import LabelRules
from tasks.core.memo import LineMemo
from tasks.core.records import Rejection
from tasks.ingest.sources import PathOutsideSource, SourceListing, find_image, stat_line


def outcome_memo(store_root: str | Path, rules: LabelRules) -> LineMemo:
    """Items made by the VOC reader, keyed on the code that makes them (the reader and what it
    imports), not the whole package: an edit in a later stage keeps them."""
    allowed = list(rules.allowed) if rules.allowed is not None else None  # sorted already
    return LineMemo(store_root, "voc-samples", json.dumps(
        [closure_version(("ingest/voc.py",)), rules.label_map, rules.merge_case_variants, allowed],
        sort_keys=True))


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


def still_its_image(outcome: Outcome, rel_folder: str, stem: str, index: dict[str, str],
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
