"""`defectflow predict`: COCO, LabelImg XMLs that LabelImg and our own VOC ingest read back with
the same boxes, overlays, hostile files quarantined with reasons, pre-labels that never
overwrite a person's XML."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.records import Box
from tasks.ingest.labelimg_writer import labelimg_xml, save_xml, voc_corners
from tasks.ingest.sources import list_source
from tasks.ingest.voc import ingest_voc, parse_voc
from tests.support import SHARED_DATA

runner = CliRunner()


def huge_png_header() -> bytes:
    """A PNG that claims 100000 x 100000 pixels and holds almost nothing: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def hostile_files(folder: Path, outside: Path) -> dict[str, str]:
    """Files predict must refuse, with the reason each must get."""
    (folder / "notes.jpg").write_text("not a picture")
    good = folder / "cut.jpg"
    Image.new("RGB", (300, 300), (120, 90, 60)).save(good)
    good.write_bytes(good.read_bytes()[:400])  # a transfer cut short
    (folder / "bomb.png").write_bytes(huge_png_header())
    (folder / "._photo.jpg").write_bytes(b"\0\0macOS resource fork")
    outside.mkdir(exist_ok=True)
    Image.new("RGB", (20, 20)).save(outside / "secret.jpg")
    (folder / "link.jpg").symlink_to(outside / "secret.jpg")
    Image.new("RGB", (40, 40)).save(folder / "twin.png")
    Image.new("RGB", (40, 40)).save(folder / "twin.jpg")
    return {"notes.jpg": "not_an_image", "cut.jpg": "image_unreadable", "bomb.png": "image_too_large",
            "._photo.jpg": "junk_file", "link.jpg": "path_outside_source",
            "twin.png": "duplicate_stem"}


def ingested_boxes(folder: Path) -> dict[str, list[Box]]:
    """XMLs beside their images, read by defectflow's own VOC ingest: boxes per image file."""
    listing = list_source(folder, folder, ".xml")
    result = ingest_voc(folder, folder, listing)
    return {Path(sample.image_path).name: sample.boxes for sample in result.samples}


def test_labelimg_xml_reads_back_through_our_voc_ingest_with_the_same_boxes(tmp_path):
    Image.new("RGB", (200, 120)).save(tmp_path / "plate.JPG")
    boxes = [Box(x1=10.4, y1=20.6, x2=60.2, y2=80.5, label="scratch"),
             Box(x1=0.0, y1=0.0, x2=200.0, y2=120.0, label="傷"),  # the whole image, any language
             Box(x1=-3.0, y1=100.0, x2=5.0, y2=130.0, label="spot")]  # spills over the edges
    (tmp_path / "plate.xml").write_bytes(labelimg_xml(tmp_path / "plate.JPG", 200, 120, 3, boxes))
    [back] = ingested_boxes(tmp_path).values()
    expected = [(xmin - 1, ymin - 1, xmax, ymax) for xmin, ymin, xmax, ymax in
                (voc_corners(box, 200, 120) for box in boxes)]
    assert [(b.x1, b.y1, b.x2, b.y2) for b in back] == expected
    assert expected == [(10, 21, 60, 80), (0, 0, 200, 120), (0, 100, 5, 120)]
    assert [b.label for b in back] == ["scratch", "傷", "spot"]
    parsed = parse_voc((tmp_path / "plate.xml").read_bytes())
    assert (parsed.filename, parsed.width, parsed.height, parsed.depth) == ("plate.JPG", 200, 120, 3)
    assert [o.truncated for o in parsed.objects] == [False, True, True]  # at the edge, as LabelImg


def test_the_xml_has_the_layout_labelimg_itself_writes():
    from xml.etree.ElementTree import fromstring

    sample = SHARED_DATA / "labelimg_samples" / "generated_by_labelimg_writer" / "test.xml"
    if not sample.is_file():
        pytest.skip(f"real data {sample} is absent (it sits beside the repo in CI)")
    ours = labelimg_xml(Path("/data/tests/test.bmp"), 512, 512, 1,
                        [Box(x1=59, y1=39, x2=430, y2=504, label="person")])

    def layout(element, depth=0):
        return [(depth, element.tag)] + [t for child in element for t in layout(child, depth + 1)]

    theirs = fromstring(sample.read_bytes())
    for extra in theirs.findall("object")[1:]:
        theirs.remove(extra)
    assert layout(fromstring(ours)) == layout(theirs)
    assert not ours.startswith(b"<?xml") and b"\n\t<folder>tests</folder>" in ours
    assert b"<xmin>60</xmin>" in ours and b"<ymax>504</ymax>" in ours


@pytest.mark.slow
@pytest.mark.trains
@pytest.mark.usefixtures("prefect_server")
def test_a_trained_tiny_model_predicts_on_real_photos_it_never_saw(synthetic_dataset, tmp_path,
                                                                  home):
    from tasks.core.config import ModelConfig, TrainConfig
    from tasks.training.train import train_step

    photos = tmp_path / "photos"
    photos.mkdir()
    real = [SHARED_DATA / "labelimg_samples" / "humansignal_head_tests" / "臉書.jpg",
            SHARED_DATA / "labelimg_samples" / "humansignal_head_tests" / "test.512.512.bmp",
            SHARED_DATA / "labelimg_samples" / "pr270_test_images" / "C1_P01_N1_S2_1.JPG"]
    real += sorted((SHARED_DATA / "neu_det" / "images").glob("*.jpg"))[:3]
    if not all(path.is_file() for path in real):
        pytest.skip(f"real photos under {SHARED_DATA} are absent (they sit beside the repo in CI)")
    for path in real:
        shutil.copy(path, photos / path.name)
    (photos / "line 2").mkdir()
    shutil.move(photos / real[-1].name, photos / "line 2" / real[-1].name)
    refused = hostile_files(photos, tmp_path / "outside")
    train_step(synthetic_dataset, tmp_path / "trained", ModelConfig(checkpoint="tiny", lora=None),
               TrainConfig(lr=2e-3, batch_size=8, eval_steps=10, max_steps=20))
    out = tmp_path / "out"

    result = runner.invoke(app, ["--home", str(home), "predict", str(photos), "--model",
                                 str(tmp_path / "trained"), "--out", str(out), "--threshold", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "predict_report.json").read_text())
    predicted = [path.name for path in real[:-1]] + [
        f"line 2/{real[-1].name}", "twin.jpg"]
    assert report["found"] == report["predicted"] + report["quarantined"] == len(predicted) + len(refused)
    assert {r["item"]: r["reason"] for r in report["quarantined_files"]} == refused
    coco = json.loads((out / "predictions.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == sorted(predicted)
    assert {c["name"] for c in coco["categories"]} <= {"patch", "scratch", "spot"}
    for item in predicted:
        stem = str(Path(item).with_suffix(""))
        with Image.open(out / "overlays" / f"{stem}.jpg") as overlay, Image.open(photos / item) as photo:
            assert overlay.size == photo.size
        xml = parse_voc((out / "labelimg" / f"{stem}.xml").read_bytes())
        assert xml.filename == Path(item).name
    # The XMLs, put beside the photos, come back through our own VOC ingest with the boxes the
    # model gave (at threshold 0: all of them), to the pixel LabelImg can store.
    for item in predicted:
        stem = str(Path(item).with_suffix(""))
        shutil.copy(out / "labelimg" / f"{stem}.xml", photos / f"{stem}.xml")
    back = ingested_boxes(photos)
    by_image = {image["id"]: image for image in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for image_id, image in by_image.items():
        given = [voc_corners(Box(x1=a["bbox"][0], y1=a["bbox"][1], x2=a["bbox"][0] + a["bbox"][2],
                                 y2=a["bbox"][1] + a["bbox"][3], label=names[a["category_id"]]),
                             image["width"], image["height"]) + (names[a["category_id"]],)
                 for a in coco["annotations"] if a["image_id"] == image_id]
        assert [(b.x1 + 1, b.y1 + 1, b.x2, b.y2, b.label) for b in back[Path(image["file_name"]).name]] \
            == given
    assert f"found {report['found']} = predicted {report['predicted']}" in result.output


def test_a_model_argument_that_names_nothing_is_one_clear_line(tmp_path):
    (tmp_path / "photos").mkdir()
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "predict", str(tmp_path / "photos"),
                                 "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "is not a model folder" in " ".join(result.output.split())
    champion = runner.invoke(app, ["--home", str(tmp_path / "home"), "predict",
                                   str(tmp_path / "photos"), "--model", "champion",
                                   "--out", str(tmp_path / "o")])
    assert champion.exit_code == 2 and "give --config" in " ".join(champion.output.split())
    assert "Traceback" not in result.output + champion.output


@pytest.mark.usefixtures("prefect_server")
def test_predict_again_into_the_same_out_keeps_the_xml_a_person_corrected(tmp_path, home,
                                                                          tiny_florence):
    photos, out = tmp_path / "photos", tmp_path / "out"
    (photos / "line 2").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 90, 90)).save(photos / "plate.jpg")

    def predict(*extra: str) -> tuple[dict, str]:
        result = runner.invoke(app, ["--home", str(home), "predict", str(photos), "--model",
                                     str(tiny_florence), "--out", str(out), "--threshold", "0",
                                     *extra])
        assert result.exit_code == 0, result.output
        return json.loads((out / "predict_report.json").read_text()), " ".join(result.output.split())

    first, said = predict()
    assert (first["xmls_written"], first["kept_existing"]) == (1, 0)
    assert "1 written, 0 kept_existing" in said
    xml = out / "labelimg" / "plate.xml"
    models_xml = xml.read_bytes()
    # A person corrects the boxes in LabelImg and saves; a new photo lands in the folder.
    corrected = labelimg_xml(photos / "plate.jpg", 64, 48, 3,
                             [Box(x1=3, y1=4, x2=30, y2=20, label="scratch")]).replace(
        b"<annotation>", b'<annotation verified="yes">')
    assert corrected != models_xml
    xml.write_bytes(corrected)
    Image.new("RGB", (40, 40), (60, 60, 60)).save(photos / "line 2" / "bolt.png")

    again, said = predict()
    assert xml.read_bytes() == corrected  # byte for byte
    assert (again["predicted"], again["xmls_written"], again["kept_existing"]) == (2, 1, 1)
    assert again["kept_existing_files"] == ["plate.xml"] and again["overwrite"] is False
    assert (out / "labelimg" / "line 2" / "bolt.xml").is_file()
    assert "1 written, 1 kept_existing" in said and "--overwrite" in said
    assert not list((out / "labelimg").rglob(".*"))  # no partial files left behind

    replaced, said = predict("--overwrite")
    assert xml.read_bytes() == models_xml  # the model's answer again (the same model, greedy)
    assert (replaced["xmls_written"], replaced["kept_existing"], replaced["overwrite"]) == (
        2, 0, True)
    assert "2 written, 0 kept_existing" in said


@pytest.mark.parametrize("hard_links", [True, False])
def test_an_xml_already_there_is_kept_unless_overwrite(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # a file system without them (some network shares): created exclusively
        def refused(*args):
            raise PermissionError("no hard links here")
        monkeypatch.setattr("tasks.ingest.labelimg_writer.os.link", refused)
    xml = tmp_path / "labelimg" / "a.xml"
    assert save_xml(xml, b"the model's") is True and xml.read_bytes() == b"the model's"
    xml.write_bytes(b"corrected by a person")
    assert save_xml(xml, b"the model's again") is False
    assert xml.read_bytes() == b"corrected by a person"
    assert save_xml(xml, b"replaced", overwrite=True) is True and xml.read_bytes() == b"replaced"
    assert [path.name for path in xml.parent.iterdir()] == ["a.xml"]  # no partial file left
