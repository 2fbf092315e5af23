"""What an annotation reader returns, and the images no annotation claims (never silently ignored)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.records import Rejection, Sample
from tasks.ingest.sources import PathOutsideSource, SourceListing, is_junk_name, relative_posix


@dataclass
class IngestResult:
    samples: list[Sample] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)  # images / annotations
    rejected_boxes: list[Rejection] = field(default_factory=list)
    boxes_found: int = 0
    spellings: Counter[str] = field(default_factory=Counter)  # raw class names, as annotated
    several_passes: int = 0  # images whose boxes came from more than one annotation folder

    def merge(self, other: IngestResult) -> None:
        """Another source's result added to this one."""
        self.samples += other.samples
        self.rejected += other.rejected
        self.rejected_boxes += other.rejected_boxes
        self.boxes_found += other.boxes_found
        self.spellings.update(other.spellings)
        self.several_passes += other.several_passes


def reject_unclaimed_images(
    images_root: Path, listing: SourceListing, claimed: set[str] | set[Path], result: IngestResult
) -> None:
    """Images that no annotation mentions: junk, or unlabelled (never silently ignored)."""
    claimed_paths = {os.fspath(path) for path in claimed}
    for path in listing.image_paths:
        if path in claimed_paths:
            continue
        item = relative_posix(path, images_root)
        try:
            listing.check_inside(images_root, path)
        except PathOutsideSource as exc:
            result.rejected.append(Rejection(item=item, reason="path_outside_source", detail=str(exc)))
            continue
        if is_junk_name(os.path.basename(path)):
            result.rejected.append(Rejection(item=item, reason="junk_file",
                                             detail="hidden or macOS resource-fork file"))
        else:
            result.rejected.append(Rejection(item=item, reason="annotation_missing",
                                             detail="no annotation refers to this image"))
