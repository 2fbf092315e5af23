"""What an annotation reader returns, and the images no annotation claims (never silently ignored)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.records import Rejection, Sample
from tasks.ingest.sources import PathOutsideSource, SourceListing, is_junk_name


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
    images_root: Path, listing: SourceListing, claimed: set[Path], result: IngestResult
) -> None:
    """Images that no annotation mentions: junk, or unlabelled (never silently ignored)."""
    for path in listing.images:
        if path in claimed:
            continue
        item = path.relative_to(images_root).as_posix()
        try:
            listing.check_inside(images_root, path)
        except PathOutsideSource as exc:
            result.rejected.append(Rejection(item=item, reason="path_outside_source", detail=str(exc)))
            continue
        if is_junk_name(path.name):
            result.rejected.append(Rejection(item=item, reason="junk_file",
                                             detail="hidden or macOS resource-fork file"))
        else:
            result.rejected.append(Rejection(item=item, reason="annotation_missing",
                                             detail="no annotation refers to this image"))
