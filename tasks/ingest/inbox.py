"""The pre-label inbox as a second, read-only source (`prelabel: {adopt: verified}`): only XMLs a
person marked checked in LabelImg (`<annotation verified="yes">`, its "Verify Image" key) are
labels; the model's pre-labels (`verified="no"`) and a person's unfinished files are not read
as labels, and do not count as new. Nothing in the inbox is moved or written here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from tasks.core.labels import LabelRules
from tasks.core.memo import LineMemo
from tasks.core.records import Sample
from tasks.ingest.results import IngestResult
from tasks.ingest.sources import PathOutsideSource, SourceListing, fingerprint_of, list_source
from tasks.ingest.voc import MAX_XML_BYTES, ingest_voc

# Inbox items are named apart from the main source's: the same file name may be in both.
INBOX_ITEM_PREFIX = "inbox/"


def verified_mark(xml_path: str | Path) -> bool | None:
    """LabelImg's "Verify Image" mark on an XML's root (`<annotation verified="yes">`): True or
    False; None when the root cannot be read safely (entities, malformed, unreadable, not an
    `<annotation>`). Only the root's start tag is read: a few hundred bytes per file."""
    try:
        for _event, root in SafeET.iterparse(os.fspath(xml_path), events=("start",)):
            return root.get("verified") == "yes" if root.tag == "annotation" else None
    except (DefusedXmlException, ParseError, OSError, RecursionError):
        return None
    return None


def root_verified(xml_path: Path, inbox: Path, listing: SourceListing) -> bool | None:
    """`verified_mark` of an inbox XML; None also for a link out of the inbox or a file too big
    to ingest. Such a file goes to ingest, which quarantines it under its reason, so it never
    vanishes."""
    try:
        listing.check_inside(inbox, xml_path)
        if listing.stat(xml_path).st_size > MAX_XML_BYTES:
            return None
    except (PathOutsideSource, OSError):
        return None
    return verified_mark(xml_path)


@dataclass
class InboxListing:
    listing: SourceListing  # the XMLs to ingest (verified or unreadable) and the images beside them
    waiting: int  # XMLs not marked verified: pre-labels, or a person's work not checked yet


def adoptable(inbox: Path) -> InboxListing:
    """The inbox's verified XMLs (and those whose mark cannot be read) with the images of the
    same folder and stem (LabelImg saves an image's XML under its stem). The fingerprint covers
    only these: a pre-label written, or an unlabelled image arriving, is not new data."""
    everything = list_source(inbox, inbox, ".xml")
    adopted, waiting = [], 0
    for xml_path in everything.annotations:
        if root_verified(xml_path, inbox, everything) is False:
            waiting += 1
        else:
            adopted.append(os.fspath(xml_path))
    stems = {os.path.splitext(p)[0].lower() for p in adopted}
    images = [p for p in everything.image_paths if os.path.splitext(p)[0].lower() in stems]
    listing = SourceListing(image_paths=images, annotation_paths=adopted, listed=everything.listed)
    listing.fingerprint = fingerprint_of(listing)
    return InboxListing(listing, waiting)


def ingest_inbox(inbox: Path, rules: LabelRules, on_line: Callable[[str], None],
                 memo: LineMemo | None = None, outcomes: LineMemo | None = None,
                 ) -> tuple[IngestResult, InboxListing]:
    """The verified inbox XMLs read as any VOC source (the same checks and quarantine reasons),
    their items and rejections named `inbox/<path>`."""
    found = adoptable(inbox)

    def renamed(line: str) -> None:
        sample = Sample.model_validate_json(line)
        on_line(sample.model_copy(update={"item": INBOX_ITEM_PREFIX + sample.item}).model_dump_json())

    result = ingest_voc(inbox, inbox, found.listing, rules, renamed, memo, outcomes)
    for rejection in result.rejected + result.rejected_boxes:
        rejection.item = INBOX_ITEM_PREFIX + rejection.item
    return result, found
