"""The bad-input corpus: every case gets a named reason, the run goes on, counts add up, and
nothing outside the source folder is read or written."""

import io
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from flows.prepare import prepare
from tasks.demo.sample_data import DrawnBox, voc_xml

pytestmark = pytest.mark.usefixtures("prefect_server")
SECRET = "DEFECTFLOW-SECRET-MARKER"

_opened: list[str] = []
_recording = {"on": False}


def _make_audit_hook(opened: list[str], recording: dict):
    # Closes over its own references: audit hooks outlive the module's globals at shutdown.
    def hook(event: str, args: tuple) -> None:
        if recording["on"] and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            opened.append(os.fsdecode(args[0]))

    return hook


sys.addaudithook(_make_audit_hook(_opened, _recording))


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def build_corpus(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """A VOC source full of trouble; returns (images, annotations, expected reason per item)."""
    images, xmls, outside = root / "src" / "images", root / "src" / "xml", root / "outside"
    for folder in (images, xmls, outside):
        folder.mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), 50)))
    (outside / "secret.txt").write_text(SECRET)
    box = [DrawnBox("dent", 2, 2, 20, 20)]
    expected = {}

    def case(stem, image_bytes=None, filename=None, boxes=box, xml_text=None, size=(32, 32), reason=None):
        name = filename or f"{stem}.jpg"
        if image_bytes is not None:
            (images / name).write_bytes(image_bytes)
        text = xml_text if xml_text is not None else voc_xml(name, size[0], size[1], 3, boxes)
        (xmls / f"{stem}.xml").write_text(text)
        expected[f"{stem}.xml"] = reason

    good = jpeg(Image.new("RGB", (32, 32), (10, 120, 30)))
    case("good", good, reason="kept")
    case("malformed", xml_text="<annotation><filename>x.jpg</filename><object>", reason="xml_malformed")
    case("laughs", xml_text='<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
         '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><annotation><filename>good.jpg</filename>'
         '<object><name>&b;</name></object></annotation>', reason="xml_forbidden")
    case("xxe", xml_text=f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{outside}/secret.txt">]>'
         "<annotation><filename>&x;</filename></annotation>", reason="xml_forbidden")
    case("dotdot", filename="../../outside/secret.jpg", reason="path_outside_source")
    case("absolute", filename=str(outside / "secret.jpg"), reason="path_outside_source")
    (images / "link.jpg").symlink_to(outside / "secret.jpg")
    case("link", filename="link.jpg", reason="path_outside_source")
    case("bomb", jpeg(Image.new("L", (8000, 8000))), reason="image_too_large")
    case("truncated", jpeg(Image.effect_noise((64, 64), 40).convert("RGB"))[:400], size=(64, 64),
         reason="image_unreadable")
    case("zero", b"", reason="not_an_image")
    case("text", b"just some text, not a picture", reason="not_an_image")
    case("missing", None, reason="image_missing")
    deep = "<a>" * 100_000 + "</a>" * 100_000  # nested deeper than any recursive parser goes
    case("deep", jpeg(Image.new("RGB", (32, 32), 33)), reason="kept",
         xml_text=voc_xml("deep.jpg", 32, 32, 3, box).replace("<segmented>", deep + "<segmented>"))
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 200, 0, 0)).save(cmyk, "JPEG")
    case("cmyk", cmyk.getvalue(), reason="kept")
    sixteen = io.BytesIO()
    Image.new("I;16", (32, 32), 40000).save(sixteen, "PNG")
    case("sixteen", sixteen.getvalue(), filename="sixteen.png", reason="kept")
    palette = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).convert("P").save(palette, "PNG")
    case("palette", palette.getvalue(), filename="palette.png", reason="kept")
    rgba = io.BytesIO()
    Image.new("RGBA", (32, 32), (200, 30, 30, 128)).save(rgba, "PNG")
    case("rgba", rgba.getvalue(), filename="rgba.png", reason="kept")
    rotated = Image.new("RGB", (48, 32), (200, 30, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6
    case("rotated", jpeg(rotated, exif=exif), size=(48, 32), reason="kept")
    case("wrongsize", jpeg(Image.new("RGB", (32, 32), 77)), size=(320, 320), reason="size_mismatch")
    case("zz_duplicate", good, reason="duplicate_image")  # same pixels as good.jpg (first item wins)
    case("badboxes", jpeg(Image.new("RGB", (32, 32), (90, 20, 200))), reason="kept", boxes=[
        DrawnBox("dent", 20, 20, 5, 5),  # inverted
        DrawnBox("dent", 5, 5, 4, 4),  # zero area (xmax = xmin - 1)
        DrawnBox("dent", -30, -30, -10, -10),  # negative, outside
        DrawnBox("dent", 20, 20, 90, 90),  # partly beyond: clipped
        DrawnBox("alien", 2, 2, 10, 10),  # unknown class
    ])
    (images / "._good.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    expected["._good.jpg"] = "junk_file"
    (images / "stray.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), 5)))
    expected["stray.jpg"] = "annotation_missing"
    return images, xmls, expected


def test_bad_input_corpus(tmp_path, capfd):
    images, xmls, expected = build_corpus(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(f"name: bad\nsource: {{format: voc, images: {images}, annotations: {xmls}}}\n"
                      "grayscale: convert\nlabels: [dent]\nimages: {max_pixels: 50000000}\n")
    outside = tmp_path / "outside"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in outside.iterdir()}
    _opened.clear()
    _recording["on"] = True
    try:
        report = prepare(str(config), str(tmp_path / "out"), str(tmp_path / "home"))
    finally:
        _recording["on"] = False

    reasons = {q["item"]: q["reason"] for q in report["quarantine"]}
    for item, reason in expected.items():
        if reason != "kept":
            assert reasons.get(item) == reason, (item, reasons.get(item))
    assert report["images"]["kept"] == sum(r == "kept" for r in expected.values())
    images_count = report["images"]
    assert images_count["found"] == images_count["kept"] + images_count["quarantined"] + \
        images_count["dropped_grayscale"] == len(expected)
    boxes = report["boxes"]
    assert boxes["found"] == boxes["kept"] + sum(boxes["dropped"].values())
    assert boxes["clipped"] >= 1
    for reason in ("box_degenerate", "box_outside_image", "unknown_label"):
        assert boxes["dropped"].get(reason), reason

    # Nothing outside the source folder was read, nothing there was written or added.
    assert any("/src/images/" in p for p in _opened)  # the hook does see the reads
    touched = [p for p in _opened if Path(p).resolve().is_relative_to(outside.resolve())]
    assert touched == []
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in outside.iterdir()} == before
    everything = json.dumps(report) + "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "home").rglob("*.jsonl"))
    assert SECRET not in everything
    assert "Traceback" not in "".join(capfd.readouterr())


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nsource: {format: voc, images: a, annotations: b}\ntrain: {lr: fast}\n", "train.lr"),
    ("name: x\nsource: {format: voc, images: a, annotations: b}\nmodel: {kind: yolo}\n", "model.kind"),
    ("name: x\nsource: {format: voc, images: a, annotations: b}\nsplit: {train: 2}\n", "split.train"),
    ("name: x\nsource: {format: voc, images: a, annotations: b}\nimages: {max_pixels: -1}\n",
     "images.max_pixels"),
    ("name: ../evil\nsource: {format: voc, images: a, annotations: b}\n", "name"),
])
def test_bad_configs_are_clear_errors(tmp_path, text, message):
    from tasks.core.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path)


def test_an_unparseable_coco_file_stops_prepare_with_one_line_and_exit_code_2(tmp_path, capfd):
    from typer.testing import CliRunner

    from flows.cli import app

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (10, 10)).save(images / "a.png")
    (tmp_path / "deep.json").write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nsource: {{format: coco, images: {images}, "
                      f"annotations: {tmp_path / 'deep.json'}}}\n")
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "prepare", str(config),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert said.startswith("error: ") and "deep.json: nested too deeply to parse" in said
    assert "Traceback" not in result.output + "".join(capfd.readouterr())


def test_several_annotation_folders_and_yolo_through_prepare(tmp_path):
    """Passes merge in the flow and the report counts them; a YOLO folder prepares the same way."""
    images = tmp_path / "images"
    images.mkdir()
    for stem, shade in (("a", 30), ("b", 90)):  # different pixels: not one image twice
        Image.new("RGB", (32, 32), (10, 120, shade)).save(images / f"{stem}.jpg")
    for folder, boxes in (("first", [DrawnBox("dent", 2, 2, 9, 9)]),
                          ("second", [DrawnBox("dent", 20, 20, 29, 29)])):
        (tmp_path / folder).mkdir()
        for stem in ("a", "b"):
            (tmp_path / folder / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", 32, 32, 3, boxes))
    config = tmp_path / "passes.yaml"
    config.write_text(f"name: passes\nsource: {{format: voc, images: {images}, annotations: "
                      f"[{tmp_path / 'first'}, {tmp_path / 'second'}]}}\nsplit: {{train: 1.0, "
                      "validation: 0.0, test: 0.0}\n")
    report = prepare(str(config), str(tmp_path / "out"), str(tmp_path / "home"))
    assert report["annotations"]["images_from_several_folders"] == 2
    assert (report["images"]["kept"], report["boxes"]["kept"]) == (2, 4)

    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "classes.txt").write_text("dent\n")
    for stem in ("a", "b"):
        (tmp_path / "yolo" / f"{stem}.txt").write_text("0 0.5 0.5 0.25 0.25\n0 9 0.5 0.1 0.1\n")
    config.write_text(f"name: yolo\nsource: {{format: yolo, images: {images}, "
                      f"annotations: {tmp_path / 'yolo'}}}\nsplit: {{train: 1.0, validation: 0.0, "
                      "test: 0.0}\n")
    report = prepare(str(config), str(tmp_path / "out2"), str(tmp_path / "home"))
    assert (report["images"]["kept"], report["boxes"]["kept"]) == (2, 2)
    assert report["boxes"]["dropped"] == {"yolo_coords_out_of_range": 2}
    assert report["boxes"]["found"] == 4
