"""Pre-labels: the inbox images without an XML get the champion's boxes as LabelImg XMLs; a
person's XML is never touched; the inbox may not be the annotations folder."""

import pytest
from PIL import Image

from tasks.core.config import ConfigError, load_config
from tasks.core.records import Box
from tasks.predict.folder import PredictSettings, predict_images
from tasks.predict.prelabel import prelabel_inbox
from tests.predict.test_predict import ingested_boxes
from tests.scoring.test_tiled_scoring import ScriptedByCall, answer

TRUTH = {"a.png": [Box(x1=10, y1=10, x2=40, y2=30, label="scratch")],
         "b.jpg": [Box(x1=5, y1=50, x2=25, y2=90, label="spot"),
                   Box(x1=60, y1=5, x2=95, y2=20, label="scratch")]}


@pytest.fixture
def processor(tiny_florence):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_florence)


def scripted(processor, sizes: dict[str, tuple[int, int]]) -> ScriptedByCall:
    """A detector that answers each image (in file order) with its TRUTH boxes."""
    outputs = [answer(processor, TRUTH[name], *sizes[name]) for name in sorted(sizes)]
    return ScriptedByCall(outputs, processor.tokenizer.eos_token_id, len(processor.tokenizer))


def test_inbox_images_get_xmls_and_a_persons_xml_is_left_as_it_was(tmp_path, processor):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sizes = {"a.png": (100, 60), "b.jpg": (100, 100)}
    for name, size in sizes.items():
        Image.new("RGB", size, (90, 90, 90)).save(inbox / name)
    Image.new("RGB", (50, 50)).save(inbox / "done.jpg")
    human = b"<annotation><filename>done.jpg</filename><!-- corrected by Ana --></annotation>\n"
    (inbox / "done.xml").write_bytes(human)

    result = prelabel_inbox(inbox, scripted(processor, sizes), processor,
                            PredictSettings(labels=["scratch", "spot"]), "detector v7")
    assert (result["images"], result["already_labelled"], result["written"], result["boxes"]) == (
        3, 1, 2, 3)
    assert (inbox / "done.xml").read_bytes() == human
    # A model's guess says so the way LabelImg reads it (its "Verify Image" mark not set), and
    # its sidecar says which model wrote it and how sure it was of each box, in the XML's order.
    import json
    from xml.etree import ElementTree

    for name in sizes:
        xml = ElementTree.parse(inbox / name.replace(name[-4:], ".xml")).getroot()
        assert xml.get("verified") == "no"
        sidecar = json.loads((inbox / name).with_suffix(".prelabel.json").read_text())
        assert sidecar["model_version"] == "detector v7" and sidecar["xml"] == f"{name[:-4]}.xml"
        assert [b["label"] for b in sidecar["boxes"]] == [o.findtext("name") for o in xml.iter("object")]
        assert all(0 < b["score"] <= 1 for b in sidecar["boxes"])
    assert not (inbox / "done.prelabel.json").exists()
    back = ingested_boxes(inbox)
    assert {name: sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in boxes)
            for name, boxes in back.items() if name != "done.jpg"} == {
        name: sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in boxes)
        for name, boxes in TRUTH.items()}

    # The next night: every image has an XML now, nothing is written again.
    again = prelabel_inbox(inbox, scripted(processor, {}), processor, PredictSettings())
    assert (again["already_labelled"], again["written"]) == (3, 0)


def test_predict_writes_coco_xml_and_overlays_for_what_the_model_said(tmp_path, processor):
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"a.png": (100, 60), "b.jpg": (100, 100)}
    for name, size in sizes.items():
        Image.new("RGB", size, (90, 90, 90)).save(photos / name)
    report = predict_images(photos, tmp_path / "out", scripted(processor, sizes), processor,
                            PredictSettings(labels=["scratch", "spot"], threshold=0.5))
    assert (report["found"], report["predicted"], report["boxes"]) == (2, 2, 3)
    assert report["boxes_per_class"] == {"scratch": 2, "spot": 1}
    import json

    coco = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["scratch", "spot"]
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert len(first) == 1 and first[0]["bbox"] == pytest.approx([10, 10, 30, 20], abs=0.1)
    assert 0.5 < first[0]["score"] < 1  # each token scripted at probability 0.905
    for stem in ("a", "b"):
        assert b'<annotation verified="no">' in (tmp_path / "out" / "labelimg" / f"{stem}.xml").read_bytes()
        with Image.open(tmp_path / "out" / "overlays" / f"{stem}.jpg") as overlay:
            assert overlay.size == sizes[f"{stem}.png" if stem == "a" else "b.jpg"]
            assert len(set(overlay.getdata())) > 2  # boxes and captions drawn on the gray


@pytest.mark.parametrize("inbox", ["annotations", "annotations/new", "."])
def test_an_inbox_that_overlaps_the_annotations_is_refused(tmp_path, inbox):
    config = tmp_path / "c.yaml"
    config.write_text("name: s\nsource: {format: voc, images: images, annotations: annotations}\n"
                      f"prelabel: {{inbox: '{inbox}'}}\n")
    with pytest.raises(ConfigError, match="prelabel.inbox .* overlaps source.annotations"):
        load_config(config)
    config.write_text(config.read_text().replace(f"'{inbox}'", "inbox"))
    assert load_config(config).prelabel.inbox == (tmp_path / "inbox").resolve()
