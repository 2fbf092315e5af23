"""Labelled images landing in a source: what counts as landed, and when a batch is complete.

A labelled image is an image with its annotation: LabelImg writes the XML after the image, and a
copy takes time, so an image alone is not counted, and a batch is complete once the source
folders have been quiet for `trigger.quiet_seconds`. `LandingWatch` adds up what landed since the
last batch it announced and says when to announce the next one; `serve` (and `watch`) feed it the
file changes watchfiles reports and emit its batches as Prefect events
(`flows/landing.py`). Pure: no Prefect, no threads, the clock passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.config import SourceConfig
from tasks.core.operations_config import TriggerConfig
from tasks.ingest.inbox import adoptable
from tasks.ingest.ingest import list_configured_source
from tasks.ingest.sources import (
    SourceListing,
    find_image,
    index_images,
    relative_posix,
    stat_line,
    stem_of,
)

LANDED_EVENT = "defectflow.images.landed"


def line_resource_id(config_name: str) -> str:
    """The Prefect resource a line's landing events concern (the deployment trigger matches it)."""
    return f"defectflow.line.{config_name}"


def labelled_images(source: SourceConfig) -> dict[str, str]:
    """Every image of the source that has its annotation, by path, with the state of both (their
    stat lines: any rewrite changes it). VOC and YOLO: paired as ingest pairs them by name;
    COCO: the images the JSON names (a relabel inside the JSON is not seen as a landing). With an
    adopted inbox, its images whose XML a person verified too (a pre-label does not land)."""
    coco = source if source.format == "coco" else None
    roots = [path for path in source.annotation_paths if path.is_dir()]
    found = _with_annotations(list_configured_source(source), source.images, roots, coco)
    if source.verified_inbox is not None:
        inbox = source.verified_inbox
        found |= _with_annotations(adoptable(inbox).listing, inbox, [inbox])
    return found


def _with_annotations(listing: SourceListing, images_root: Path, annotation_roots: list[Path],
                      coco: SourceConfig | None = None) -> dict[str, str]:
    def state(path: Path) -> str:
        found = listing.listed.get(os.fspath(path))
        return stat_line(path, found[1] if found else os.lstat(path))

    if coco is not None:
        try:
            named = {image.get("file_name") for image in
                     json.loads(Path(coco.annotations).read_text(encoding="utf-8"))["images"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # half written, or not COCO: the next quiet moment reads it again
        return {os.fspath(p): state(p) for p in listing.images
                if p.relative_to(coco.images).as_posix() in named or p.name in named}
    # Each annotation's image as ingest finds it without reading the file: the image of its
    # stem in the same relative folder, else the one image of that stem anywhere (an image of
    # the same stem in another folder is not labelled by it).
    index = index_images(images_root, listing.image_paths)
    labelled: dict[str, str] = {}
    for path in listing.annotation_paths:
        root = next((r for r in annotation_roots
                     if path.startswith(os.fspath(r).rstrip(os.sep) + os.sep)), None)
        if root is None:
            continue
        relative = relative_posix(path, root)
        image = find_image(None, posixpath.dirname(relative), stem_of(relative), index)
        if image is not None:
            key = os.fspath(image)
            labelled[key] = labelled.get(key, state(Path(key))) + state(Path(path))
    return labelled


def landed_since(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The labelled images that are new, or whose image or annotation changed, since `before`."""
    return sorted(path for path, state in now.items() if before.get(path) != state)


@dataclass
class Landing:
    """One batch: what the event says."""

    images: list[str]

    def payload(self, config_name: str) -> dict:
        digest = hashlib.sha256("\n".join(self.images).encode()).hexdigest()[:16]
        return {"line": config_name, "images": len(self.images), "names_digest": digest,
                "examples": [Path(p).name for p in self.images[:5]]}


@dataclass
class LandingWatch:
    """Adds up labelled images landing in `source` and says when a batch is complete: the source
    quiet for `quiet_seconds`, at least `min_new_images` landed since the last batch, and no night
    of the line running (landings during a night make one batch after it, however many).

    With a `state_file` (in the line's work dir) what it has seen and the batches Prefect has not
    confirmed yet (`pending`, each with its event id) outlive the process: a serve restarted
    after a kill starts from there, so a batch held back during a night, or announced while the
    server was away, is announced again, under the same event id."""

    source: SourceConfig
    trigger: TriggerConfig
    seen: dict[str, str] = field(default_factory=dict)  # labelled images at the last batch
    last_change: float | None = None  # set while a change waits to be looked at
    pending: list[dict] = field(default_factory=list)  # {"id", "payload"}: not confirmed yet
    state_file: Path | None = None
    line: str = ""  # the line's (config's) name, in the events' payload

    @classmethod
    def starting_now(cls, source: SourceConfig, trigger: TriggerConfig,
                     state_file: Path | None = None, line: str = "") -> LandingWatch:
        """What it saw when it last stopped (`state_file`); without one, what is there already
        is not new (the night's own check, and the cron, cover it)."""
        saved = _read_state(state_file)
        if saved is not None:
            return cls(source, trigger, saved["seen"], pending=saved["pending"],
                       state_file=state_file, line=line)
        watch = cls(source, trigger, labelled_images(source), state_file=state_file, line=line)
        watch._save()
        return watch

    def changed(self, now: float) -> None:
        self.last_change = now

    def batch(self, now: float, night_running: Callable[[], bool]) -> Landing | None:
        """The batch to announce now, if one is complete; it becomes the new starting point and
        a pending event (saved before it is sent). `night_running` is asked once the source has
        been quiet, before the source is listed: while a night runs nothing is listed (a
        listing of 20,000 images takes over a second)."""
        if self.last_change is None or now - self.last_change < self.trigger.quiet_seconds:
            return None
        if night_running():
            return None  # asked again until the night ends: then one batch for all of it
        current = labelled_images(self.source)
        new = landed_since(self.seen, current)
        if len(new) < self.trigger.min_new_images:
            self.last_change = None  # the sum waits for the next change (or the cron)
            return None
        landing = Landing(new)
        self.seen, self.last_change = current, None
        self.pending.append({"id": str(uuid.uuid4()), "payload": landing.payload(self.line)})
        self._save()
        return landing

    def confirmed(self, event_id: str) -> None:
        """Prefect has the event (or the night it started): it is no longer pending."""
        self.pending = [event for event in self.pending if event["id"] != event_id]
        self._save()

    def _save(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        staged = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        staged.write_text(json.dumps({"seen": self.seen, "pending": self.pending}))
        staged.replace(self.state_file)


WATCH_STATE = "landing_watch.json"  # in the line's work dir


def _read_state(path: Path | None) -> dict | None:
    """The saved watch state; None when there is none. One that cannot be read is an error:
    starting from "now" instead would forget a held batch."""
    if path is None or not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return {"seen": dict(saved["seen"]), "pending": list(saved["pending"])}


def what_started(landed: dict | None, auto_scheduled: bool) -> dict:
    """What started a night: a landing event (the `landed` parameter the trigger filled in), the
    schedule, or a person (`defectflow run`, the demo, a Run button)."""
    if landed:
        return {"by": "event", **landed}
    return {"by": "schedule" if auto_scheduled else "hand"}


def started_by_line(started: dict) -> str:
    if started["by"] == "event":
        examples = ", ".join(started.get("examples") or [])
        return (f"started by the event {started.get('event', LANDED_EVENT)} "
                f"({started.get('event_id')}): {started.get('images')} labelled images landed"
                + (f" ({examples}, ...)" if examples else ""))
    if started["by"] == "schedule":
        return "started by the schedule (the cron; no landing event)"
    return "started by hand (defectflow run, the demo, or a Run in Prefect)"


STARTING_S = 600  # a night Pending longer than this is not starting (its worker is gone)
