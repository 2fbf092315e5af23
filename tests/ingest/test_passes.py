"""LabelImg projects annotated in passes: one folder of XMLs per class or annotator, same file
names, same images. Boxes merge into one record per image."""

from pathlib import Path

from PIL import Image

from tasks.demo.sample_data import DrawnBox, voc_xml
from tasks.ingest.sources import list_source
from tasks.ingest.voc import ingest_voc


def write_pass(folder: Path, stem: str, boxes: list[DrawnBox], size=(64, 48)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", *size, 3, boxes))


def ingest(images: Path, folders: list[Path]):
    return ingest_voc(images, folders, list_source(images, folders, ".xml"))


def test_two_annotation_folders_give_one_record_per_image_with_both_folders_boxes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("p1", "p2", "p3"):
        Image.new("RGB", (64, 48)).save(images / f"{stem}.jpg")
    scratches, spots = tmp_path / "scratches", tmp_path / "spots"
    write_pass(scratches, "p1", [DrawnBox("scratch", 2, 2, 20, 20)])
    write_pass(spots, "p1", [DrawnBox("spot", 30, 30, 40, 40), DrawnBox("spot", 5, 30, 9, 34)])
    write_pass(scratches, "p2", [DrawnBox("scratch", 1, 1, 9, 9)])
    write_pass(spots, "p2", [DrawnBox("scratch", 1, 1, 9, 9)])  # the same box in both passes
    write_pass(spots, "p3", [])  # only one pass looked at p3
    result = ingest(images, [scratches, spots])
    by_item = {s.item: s for s in result.samples}
    assert sorted(by_item) == ["p1.xml", "p2.xml", "p3.xml"]
    assert sorted(b.label for b in by_item["p1.xml"].boxes) == ["scratch", "spot", "spot"]
    assert by_item["p1.xml"].source == f"{scratches / 'p1.xml'};{spots / 'p1.xml'}"
    assert len(by_item["p2.xml"].boxes) == 1
    assert [(r.item, r.reason) for r in result.rejected_boxes] == [("p2.xml#1", "box_duplicate")]
    assert result.several_passes == 2 and result.rejected == []
    assert result.boxes_found == 5 == sum(len(s.boxes) for s in result.samples) + 1


def test_passes_that_disagree_on_the_size_or_cannot_be_read_quarantine_their_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("ok", "sizes", "broken"):
        Image.new("RGB", (64, 48)).save(images / f"{stem}.jpg")
    first, second = tmp_path / "ana", tmp_path / "ben"
    for stem in ("ok", "sizes", "broken"):
        write_pass(first, stem, [DrawnBox("dent", 2, 2, 9, 9)])
    write_pass(second, "ok", [DrawnBox("dent", 20, 2, 29, 9)])
    write_pass(second, "sizes", [DrawnBox("dent", 20, 2, 29, 9)], size=(640, 480))
    (second / "broken.xml").write_text("<annotation><object>")
    result = ingest(images, [first, second])
    assert [s.item for s in result.samples] == ["ok.xml"]
    reasons = {r.item: (r.reason, r.detail) for r in result.rejected}
    assert reasons["sizes.xml"][0] == "annotation_conflict" and "640x480" in reasons["sizes.xml"][1]
    assert reasons["broken.xml"][0] == "xml_malformed" and str(second) in reasons["broken.xml"][1]
    # Each quarantined image is counted once (under its XMLs' reason, not also as unlabelled).
    assert len(result.rejected) == 2
