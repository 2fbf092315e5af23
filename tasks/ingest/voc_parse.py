"""Reading one Pascal VOC XML safely, and remembering what it said.

Entity expansion and external entities are refused (defusedxml). A parse is remembered by the
file's content hash, and by its path and stat (see `voc.read_annotation`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from tasks.core.code_versions import closure_version
from tasks.core.memo import LineMemo


@dataclass
class VocObject:
    name: str
    bndbox: dict[str, str | None]
    difficult: bool
    truncated: bool


@dataclass
class VocAnnotation:
    filename: str | None
    path: str | None
    width: int | None
    height: int | None
    depth: int | None
    objects: list[VocObject]


def _text(node: Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _flag(value: str | None) -> bool:
    return (value or "0").strip().lower() in ("1", "true", "yes")


def parse_voc(xml_bytes: bytes) -> VocAnnotation:
    """Parse one VOC XML. Raises DefusedXmlException (entities) or ParseError (malformed)."""
    root = SafeET.fromstring(xml_bytes)
    if root.tag != "annotation":
        raise ParseError(f"root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        bndbox = obj.find("bndbox")
        coords = {key: _text(bndbox, key) for key in ("xmin", "ymin", "xmax", "ymax")}
        objects.append(
            VocObject(
                name=(_text(obj, "name") or ""),
                bndbox=coords,
                difficult=_flag(_text(obj, "difficult")),
                truncated=_flag(_text(obj, "truncated")),
            )
        )
    return VocAnnotation(
        filename=_text(root, "filename"),
        path=_text(root, "path"),
        width=_int_or_none(_text(size, "width")),
        height=_int_or_none(_text(size, "height")),
        depth=_int_or_none(_text(size, "depth")),
        objects=objects,
    )


def parse_memo(store_root: str | Path) -> LineMemo:
    """Parsed XMLs by content hash: a file seen before, wherever it is, is not parsed again."""
    return LineMemo(store_root, "voc-parse", "|".join([closure_version(("ingest/voc_parse.py",)),
                                                       defusedxml.__version__]))


def annotation_of(entry: str) -> VocAnnotation:
    *header, objects = json.loads(entry)
    return VocAnnotation(*header, [VocObject(*fields) for fields in objects])


def entry_of(a: VocAnnotation) -> str:
    return json.dumps([a.filename, a.path, a.width, a.height, a.depth, [
        [o.name, o.bndbox, o.difficult, o.truncated] for o in a.objects]])


def remembered_parse(xml_bytes: bytes, memo: LineMemo | None, file_state: str) -> VocAnnotation:
    """`parse_voc`, through the memo when there is one (only files that parse are remembered),
    under the content hash and under `file_state` (the file's path and stat)."""
    if memo is None:
        return parse_voc(xml_bytes)
    content = hashlib.sha256(xml_bytes).hexdigest()
    if (hit := memo.get(content)) is not None:
        memo.put(file_state, hit[0])
        return annotation_of(hit[0][0])
    annotation = parse_voc(xml_bytes)
    entry = [entry_of(annotation)]
    memo.put(content, entry)
    memo.put(file_state, entry)
    return annotation
