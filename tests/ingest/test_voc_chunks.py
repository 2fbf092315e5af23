"""The VOC reader's chunk memo: a night's unchanged items come back a chunk at a time (no look-up
per item), with every item's image checked again; what it gives is what a fresh read gives."""

from pathlib import Path

from tasks.core.memo import LineMemo
from tasks.demo.sample_data import DrawnBox
from tests.ingest.test_voc import _ingest_with_memo, _made, ingest, make_image, write_xml


def a_source(root: Path, count: int) -> tuple[Path, Path]:
    images, xmls = root / "images", root / "xml"
    for number in range(count):
        make_image(images / f"p{number:04d}.jpg", size=(32, 24))
        write_xml(xmls / f"p{number:04d}.xml", f"p{number:04d}.jpg",
                  [DrawnBox("dent", 2, 2, 9, 9), DrawnBox("dent", 9, 5, 3, 9)],  # one inverted
                  size=(32, 24))
    return images, xmls


def counting_look_ups(monkeypatch) -> list[str]:
    asked = []
    real = LineMemo.get
    monkeypatch.setattr(LineMemo, "get", lambda memo, line: asked.append(memo.path.parent.name)
                        or real(memo, line))
    return asked


def test_an_unchanged_source_comes_back_in_chunks_without_a_look_up_per_item(tmp_path, monkeypatch):
    images, xmls = a_source(tmp_path, 300)  # ~5 chunks
    store = tmp_path / "store"
    first = _ingest_with_memo(images, xmls, store)
    asked = counting_look_ups(monkeypatch)
    again = _ingest_with_memo(images, xmls, store)
    assert asked.count("voc-samples") == 0
    assert _made(again) == _made(first) == _made(ingest(images, xmls))
    assert len(first.samples) == 300 and len(first.rejected_boxes) == 300

    # One new image: only the chunk it falls into looks its items up, one by one.
    make_image(images / "p0150a.jpg", size=(32, 24))
    write_xml(xmls / "p0150a.xml", "p0150a.jpg", [DrawnBox("dent", 1, 1, 5, 5)], size=(32, 24))
    grown = _ingest_with_memo(images, xmls, store)
    assert 0 < asked.count("voc-samples") <= 4 * 64
    assert _made(grown) == _made(ingest(images, xmls)) and len(grown.samples) == 301


def test_a_remembered_chunk_whose_image_is_taken_is_read_item_by_item(tmp_path):
    # A new XML, earlier in name order, now claims the image of an item of a remembered chunk:
    # that item is a duplicate now, as a fresh read says, not a remembered Sample.
    images, xmls = a_source(tmp_path, 200)
    store = tmp_path / "store"
    _ingest_with_memo(images, xmls, store)
    write_xml(xmls / "a-first.xml", "p0100.jpg", [DrawnBox("dent", 1, 1, 5, 5)], size=(32, 24))
    changed = _ingest_with_memo(images, xmls, store)
    fresh = ingest(images, xmls)
    assert _made(changed) == _made(fresh)
    assert {r.item: r.reason for r in changed.rejected} == {"p0100.xml": "duplicate_image"}

    # A changed image in a remembered chunk: its item is made again (its new size), the rest kept.
    make_image(images / "p0042.jpg", size=(40, 24))
    again = _ingest_with_memo(images, xmls, store)
    assert _made(again) == _made(ingest(images, xmls))
    assert {s.item: s.file_size for s in again.samples}["p0042.xml"] == \
        (images / "p0042.jpg").stat().st_size
