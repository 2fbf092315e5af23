"""LabelImg / Pascal VOC ingest: real files from ../shared/data and generated trouble."""

from pathlib import Path

import pytest
from PIL import Image

from tasks.core.labels import ANY_LABEL, LabelRules
from tasks.demo.sample_data import DrawnBox, voc_xml
from tasks.ingest.sources import list_source
from tasks.ingest.voc import ingest_voc, parse_voc
from tests.support import shared_data


def ingest(images: Path, annotations: Path, labels=None):
    return ingest_voc(images, annotations, list_source(images, annotations, ".xml"),
                       LabelRules(allowed=None if labels is None else frozenset(labels)))


def reasons(result) -> dict[str, str]:
    return {r.item: r.reason for r in result.rejected}


def test_neu_det_sample_ingests_every_image_with_all_760_boxes():
    root = shared_data("neu_det")
    result = ingest(root / "images", root / "annotations")
    assert len(result.samples) == 300 and result.rejected == [] and result.rejected_boxes == []
    assert result.boxes_found == 760 == sum(len(s.boxes) for s in result.samples)
    first = next(s for s in result.samples if s.item == "crazing_1.xml")
    # <xmin>2</xmin> ... <xmax>193</xmax>: 1-based inclusive -> x1 = 1, x2 = 193
    assert (first.boxes[0].x1, first.boxes[0].x2) == (1, 193)
    assert (first.declared_width, first.declared_height) == (200, 200)


def test_neu_det_filenames_without_extension_are_found():
    root = shared_data("neu_det")
    no_ext = [p for p in (root / "annotations").glob("*.xml")
              if not (parse_voc(p.read_bytes()).filename or "").endswith(".jpg")]
    if not no_ext:
        pytest.skip("this sample of NEU-DET has no <filename> without extension")
    result = ingest(root / "images", root / "annotations")
    by_item = {s.item: s for s in result.samples}
    for xml in no_ext:
        assert Path(by_item[xml.name].image_path).stem == xml.stem


def test_labelimg_samples_ingest_with_named_reasons_for_what_is_missing():
    root = shared_data("labelimg_samples")
    result = ingest(root, root)
    kept = {s.item: s for s in result.samples}
    # Uppercase .JPG next to its XML; 41 boxes on a 3264x2358 photo.
    assert Path(kept["pr270_test_images/C1_P01_N1_S2_1.xml"].image_path).suffix == ".JPG"
    assert len(kept["pr270_test_images/C1_P11_N2_S4_2.xml"].boxes) == 41
    # <filename>test</filename> names no file; LabelImg's <path> base name finds the palette BMP.
    assert Path(kept["generated_by_labelimg_writer/test.xml"].image_path).name == "test.512.512.bmp"
    why = reasons(result)
    # Fixtures shipped without their image: named, not dropped.
    assert why["other_voc_xml_fixtures/mmdetection__tests_data_VOCdevkit_VOC2012_Annotations_000001.xml"] \
        == "image_missing"
    # Images no XML mentions (the non-ASCII one included) are reported as unlabelled.
    assert why["humansignal_head_tests/臉書.jpg"] == "annotation_missing"
    assert why["pr641_yolo_sample/tomatoes_helios4eos_gettyimages-edit.jpeg"] == "annotation_missing"
    xml_count = len(list(root.rglob("*.xml")))
    image_count = sum(1 for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".bmp"))
    unlabelled = sum(1 for r in result.rejected if r.reason == "annotation_missing")
    assert len(result.samples) + len(result.rejected) == xml_count + unlabelled
    assert len(result.samples) + unlabelled == image_count


def test_difficult_truncated_and_polygon_extension_are_handled():
    root = shared_data("labelimg_samples")
    parsed = parse_voc((root / "generated_by_labelimg_writer" / "test.xml").read_bytes())
    assert all(obj.difficult for obj in parsed.objects)
    assert parsed.filename == "test"  # no extension
    plus = parse_voc((root / "other_voc_xml_fixtures" /
                      "labelImg-plus-plus__tests_fixtures_compatibility_v4_sample.xml").read_bytes())
    assert plus.objects[0].name == "car" and plus.objects[0].bndbox["xmax"] == "70"


def make_image(path: Path, size=(64, 48), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


def write_xml(path: Path, filename: str, boxes, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(voc_xml(filename, size[0], size[1], 3, boxes), encoding="utf-8")


def test_generated_quirks(tmp_path):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    box = [DrawnBox("dent", 2, 2, 20, 20)]
    make_image(images / "upper.JPG")
    write_xml(xmls / "upper.xml", "upper.JPG", box)
    make_image(images / "noext.png")
    write_xml(xmls / "noext.xml", "noext", box)
    make_image(images / "own_stem.jpg")
    write_xml(xmls / "own_stem.xml", "some_other_name_that_is_gone.jpg", box)
    make_image(images / "empty.jpg")
    write_xml(xmls / "empty.xml", "empty.jpg", [])
    make_image(images / "decimals.jpg")
    (xmls / "decimals.xml").write_text(
        voc_xml("decimals.jpg", 64, 48, 3, box).replace("<xmax>20</xmax>", "<xmax>20.5</xmax>"))
    make_image(images / "unlabelled.jpg")
    (images / "._upper.JPG").write_bytes(b"\x00\x05\x16\x07")
    (xmls / "broken.xml").write_text("<annotation><filename>x.jpg</filename>")
    write_xml(xmls / "escape.xml", "../../etc/passwd", box)
    write_xml(xmls / "absolute.xml", "/etc/hostname", box)
    write_xml(xmls / "missing.xml", "missing.jpg", box)

    result = ingest(images, xmls)
    kept = {s.item: s for s in result.samples}
    assert set(kept) == {"upper.xml", "noext.xml", "own_stem.xml", "empty.xml", "decimals.xml"}
    assert kept["empty.xml"].boxes == []  # a negative, kept
    assert kept["decimals.xml"].boxes[0].x2 == 20.5
    assert reasons(result) == {
        "broken.xml": "xml_malformed",
        "escape.xml": "path_outside_source",
        "absolute.xml": "path_outside_source",
        "missing.xml": "image_missing",
        "unlabelled.jpg": "annotation_missing",
        "._upper.JPG": "junk_file",
    }


def test_entity_expansion_and_external_entities_are_refused(tmp_path):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    make_image(images / "a.jpg")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
              '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
              '<annotation><filename>a.jpg</filename><object><name>&lol3;</name>'
              '<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>'
              '</object></annotation>')
    external = (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file://{secret}">]>'
                '<annotation><filename>a.jpg</filename><object><name>&xxe;</name>'
                '<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>'
                '</object></annotation>')
    xmls.mkdir()
    (xmls / "laughs.xml").write_text(laughs)
    (xmls / "external.xml").write_text(external)
    result = ingest(images, xmls)
    assert reasons(result)["laughs.xml"] == "xml_forbidden"
    assert reasons(result)["external.xml"] == "xml_forbidden"
    assert "TOP SECRET" not in repr(result)


def test_symlink_pointing_out_of_the_source_is_refused(tmp_path):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    outside = tmp_path / "outside.jpg"
    make_image(outside)
    images.mkdir()
    (images / "link.jpg").symlink_to(outside)
    write_xml(xmls / "link.xml", "link.jpg", [DrawnBox("dent", 2, 2, 20, 20)])
    result = ingest(images, xmls)
    assert result.samples == []
    assert reasons(result) == {"link.xml": "path_outside_source"}
    assert [r.reason for r in result.rejected_boxes] == ["image_rejected"]


def test_bad_boxes_are_dropped_with_reasons_and_counted(tmp_path):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    make_image(images / "a.jpg")
    boxes = [DrawnBox("dent", 2, 2, 20, 20), DrawnBox("dent", 30, 30, 10, 10),
             DrawnBox("dent", 5, 5, 4, 9), DrawnBox("alien", 2, 2, 20, 20)]
    write_xml(xmls / "a.xml", "a.jpg", boxes)
    text = (xmls / "a.xml").read_text().replace("<xmin>5</xmin>", "<xmin>five</xmin>")
    (xmls / "a.xml").write_text(text)
    result = ingest(images, xmls, labels=["dent"])
    assert result.boxes_found == 4
    assert len(result.samples[0].boxes) == 1
    assert sorted(r.reason for r in result.rejected_boxes) == [
        "box_degenerate", "box_invalid", "unknown_label"]


def test_an_xml_symlinked_from_outside_the_source_is_never_read(tmp_path):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    make_image(images / "a.jpg")
    outside = tmp_path / "elsewhere.xml"
    write_xml(outside, "a.jpg", [DrawnBox("dent", 2, 2, 20, 20)])
    xmls.mkdir(exist_ok=True)
    (xmls / "a.xml").symlink_to(outside)
    result = ingest(images, xmls)
    assert result.samples == [] and result.boxes_found == 0  # its boxes were never parsed
    assert reasons(result) == {"a.xml": "path_outside_source"}


def test_a_malformed_xml_and_its_image_count_as_one_image(tmp_path):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    make_image(images / "good.jpg")
    write_xml(xmls / "good.xml", "good.jpg", [DrawnBox("dent", 2, 2, 20, 20)])
    make_image(images / "bad.jpg")
    (xmls / "bad.xml").write_text("<annotation><filename>bad.jpg</filename>")
    result = ingest(images, xmls)
    # found = kept + quarantined: 2 images, not 3 (bad.jpg is not also "annotation_missing").
    assert len(result.samples) + len(result.rejected) == 2
    assert reasons(result) == {"bad.xml": "xml_malformed"}


def test_an_xml_too_deep_for_the_parser_is_quarantined_not_a_traceback(tmp_path, monkeypatch):
    import tasks.ingest.voc_parse as voc_parse

    Image.new("RGB", (10, 10)).save(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text(voc_xml("a.jpg", 10, 10, 3, []))

    def too_deep(data: bytes):  # what a recursive parser does with absurd nesting
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(voc_parse, "parse_voc", too_deep)
    result = ingest(tmp_path, tmp_path)
    assert [(r.item, r.reason, r.detail) for r in result.rejected] == [
        ("a.xml", "xml_malformed", "nested too deeply to parse")]


def test_a_second_ingest_parses_only_the_xml_files_it_has_not_seen(tmp_path, monkeypatch):
    import tasks.ingest.voc_parse as voc_module
    from tasks.ingest.voc import parse_memo

    root = shared_data("neu_det")
    images, annotations = root / "images", tmp_path / "annotations"
    annotations.mkdir()
    for xml in sorted((root / "annotations").glob("*.xml"))[:20]:
        (annotations / xml.name).write_bytes(xml.read_bytes())

    def run():
        memo = parse_memo(tmp_path / "store")
        result = ingest_voc(images, annotations, list_source(images, annotations, ".xml"),
                            memo=memo)
        memo.save()
        return result

    first = run()
    parsed = []
    real = voc_module.parse_voc
    monkeypatch.setattr(voc_module, "parse_voc", lambda data: parsed.append(data) or real(data))
    edited = annotations / "crazing_1.xml"
    edited.write_text(edited.read_text().replace("<xmax>193</xmax>", "<xmax>190</xmax>"))
    second = run()
    assert parsed == [edited.read_bytes()]  # by content: the edited file only
    by_item = {s.item: s for s in second.samples}
    assert by_item["crazing_1.xml"].boxes[0].x2 == 190
    assert [s for s in second.samples if s.item != "crazing_1.xml"] == \
        [s for s in first.samples if s.item != "crazing_1.xml"]
    assert (second.rejected, second.boxes_found) == (first.rejected, first.boxes_found)


def _ingest_with_memo(images: Path, annotations: Path, store: Path, rules=ANY_LABEL,
                      chunks: bool = True):
    from tasks.ingest.voc import parse_memo
    from tasks.ingest.voc_outcomes import outcome_chunks, outcome_memo

    memos = parse_memo(store), outcome_memo(store, rules)
    result = ingest_voc(images, annotations, list_source(images, annotations, ".xml"), rules,
                        None, *memos, outcome_chunks(store, rules) if chunks else None)
    for memo in memos:
        memo.save()
    return result


def _made(result) -> tuple:
    return (result.samples, result.rejected, result.rejected_boxes, result.boxes_found,
            result.spellings)


@pytest.mark.parametrize("chunks", [False, True], ids=["per-item", "chunks"])
def test_an_item_unchanged_since_the_last_run_is_not_made_again(tmp_path, monkeypatch, chunks):
    import tasks.ingest.voc as voc

    images, xmls = tmp_path / "images", tmp_path / "xml"
    for name in ("a", "b", "c"):
        make_image(images / f"{name}.jpg")
        # c.xml names c.png, not there yet: its image is found by the XML's stem
        write_xml(xmls / f"{name}.xml", f"{name}.png" if name == "c" else f"{name}.jpg",
                  [DrawnBox("Dent", 2, 2, 20, 20), DrawnBox("dent", 9, 5, 3, 9)])  # one inverted
    first = _ingest_with_memo(images, xmls, tmp_path / "store", chunks=chunks)
    made = []
    real = voc.make_sample
    monkeypatch.setattr(voc, "make_sample", lambda item, *a: made.append(item) or real(item, *a))
    assert _made(_ingest_with_memo(images, xmls, tmp_path / "store", chunks=chunks)) == _made(first)
    assert made == [] and len(first.samples) == 3 and len(first.rejected_boxes) == 3
    # A changed image file, a better match for an XML's <filename>, new label rules: made again.
    make_image(images / "b.jpg", size=(48, 40))
    make_image(images / "c.png")
    second = _ingest_with_memo(images, xmls, tmp_path / "store", chunks=chunks)
    assert made == ["b.xml", "c.xml"]
    by_item = {s.item: s for s in second.samples}
    assert by_item["b.xml"].file_size == (images / "b.jpg").stat().st_size
    assert by_item["c.xml"].image_path == str(images / "c.png")
    renamed = _ingest_with_memo(images, xmls, tmp_path / "store",
                                LabelRules(label_map={"Dent": "scratch"}), chunks=chunks)
    assert made[2:] == ["a.xml", "b.xml", "c.xml"]
    assert {box.label for s in renamed.samples for box in s.boxes} == {"scratch"}


def test_an_xml_unchanged_since_the_last_run_is_not_read_again(tmp_path, monkeypatch):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    for name in ("a", "b", "c"):
        make_image(images / f"{name}.jpg")
        write_xml(xmls / f"{name}.xml", f"{name}.jpg", [DrawnBox("dent", 2, 2, 20, 20)])
    first = _ingest_with_memo(images, xmls, tmp_path / "store")
    touched = xmls / "b.xml"
    touched.write_text(touched.read_text())  # same bytes, new mtime: read (and found by content)
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    second = _ingest_with_memo(images, xmls, tmp_path / "store")
    assert read == ["b.xml"]
    assert second.samples[0].boxes == first.samples[0].boxes and len(second.samples) == 3


@pytest.mark.parametrize("chunks", [False, True], ids=["per-item", "chunks"])
@pytest.mark.parametrize("replaced", ["xml/a.xml", "images/a.jpg"])
def test_a_remembered_file_replaced_by_a_link_out_of_the_source_is_refused(tmp_path, replaced, chunks):
    images, xmls = tmp_path / "images", tmp_path / "xml"
    make_image(images / "a.jpg")
    write_xml(xmls / "a.xml", "a.jpg", [DrawnBox("dent", 2, 2, 20, 20)])
    assert len(_ingest_with_memo(images, xmls, tmp_path / "store", chunks=chunks).samples) == 1
    outside = tmp_path / ("outside-" + Path(replaced).name)
    (tmp_path / replaced).rename(outside)  # the same bytes, now outside, reached through a link
    (tmp_path / replaced).symlink_to(outside)
    result = _ingest_with_memo(images, xmls, tmp_path / "store", chunks=chunks)
    assert result.samples == [] and reasons(result) == {"a.xml": "path_outside_source"}
