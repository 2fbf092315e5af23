"""LabelImg's YOLO format: its own file, a VOC set exported to YOLO giving the same records, and
every malformed line with a named reason (boxes found = kept + dropped)."""

from pathlib import Path

import pytest
from PIL import Image

from tasks.core.labels import LabelRules
from tasks.demo.sample_data import generate
from tasks.ingest.sources import list_source
from tasks.ingest.voc import ingest_voc
from tasks.ingest.yolo import ingest_yolo
from tests.support import shared_data


def ingest(images: Path, annotations: Path, labels=None, allowed=None):
    return ingest_yolo(images, annotations, list_source(images, annotations, ".txt"), labels,
                       LabelRules(allowed=None if allowed is None else frozenset(allowed)))


def test_the_file_labelimg_wrote_reads_with_its_classes_txt():
    root = shared_data("labelimg_samples") / "pr641_yolo_sample"
    result = ingest(root, root)
    [sample] = result.samples
    assert result.rejected == [] and result.rejected_boxes == [] and result.boxes_found == 2
    with Image.open(sample.image_path) as image:
        width, height = image.size
    first = sample.boxes[0]  # "0 0.758333 0.616667 0.216667 0.341667"
    assert first.label == "round_object"
    assert (first.x1, first.x2) == pytest.approx(((0.758333 - 0.216667 / 2) * width,
                                                  (0.758333 + 0.216667 / 2) * width))
    assert (first.y1, first.y2) == pytest.approx(((0.616667 - 0.341667 / 2) * height,
                                                  (0.616667 + 0.341667 / 2) * height))
    assert (sample.declared_width, sample.declared_height) == (width, height)


def export_to_yolo(samples, folder: Path, classes: list[str]) -> None:
    """Our records as YOLO files (the exact normalisation of our box convention)."""
    folder.mkdir(parents=True)
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    for sample in samples:
        with Image.open(sample.image_path) as image:
            width, height = image.size
        lines = [f"{classes.index(b.label)} {(b.x1 + b.x2) / 2 / width!r} {(b.y1 + b.y2) / 2 / height!r} "
                 f"{b.width / width!r} {b.height / height!r}" for b in sample.boxes]
        (folder / f"{Path(sample.image_path).stem}.txt").write_text("\n".join(lines))


def test_a_yolo_export_of_a_voc_set_ingests_to_the_same_images_boxes_and_classes(tmp_path):
    generate(tmp_path / "voc", count=20, size=64, seed=3, troubles=False)
    images = tmp_path / "voc" / "images"
    voc = ingest_voc(images, tmp_path / "voc" / "annotations",
                     list_source(images, tmp_path / "voc" / "annotations", ".xml"))
    classes = sorted({b.label for s in voc.samples for b in s.boxes})
    export_to_yolo(voc.samples, tmp_path / "yolo", classes)
    yolo = ingest(images, tmp_path / "yolo")
    assert yolo.rejected == voc.rejected == [] and yolo.rejected_boxes == []
    assert yolo.boxes_found == voc.boxes_found > 0

    def records(result):
        return {Path(s.image_path).name: [(b.label, round(b.x1, 6), round(b.y1, 6), round(b.x2, 6),
                                           round(b.y2, 6)) for b in s.boxes]
                for s in result.samples}

    assert records(yolo) == records(voc)


def test_bad_lines_each_get_a_named_reason_and_the_counts_add_up(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "a.jpg")
    Image.new("RGB", (100, 50)).save(tmp_path / "b.png")
    Image.new("RGB", (100, 50)).save(tmp_path / "unlabelled.jpg")
    (tmp_path / "classes.txt").write_text("scratch\nspot\n\n")
    (tmp_path / "a.txt").write_text("\n".join([
        "0 0.5 0.5 0.2 0.2",  # kept
        "1 0.5 0.5 0.2",  # four fields
        "one 0.5 0.5 0.2 0.2",  # not a class id
        "2 0.5 0.5 0.2 0.2",  # no class 2
        "0 1.2 0.5 0.2 0.2",  # centre outside the image
        "0 0.95 0.5 0.2 0.2",  # right edge at 1.05
        "0 0.5 0.5 0 0.2",  # zero width
        "1 0.5 0.5 nan 0.2",  # not finite
        "",
    ]))
    (tmp_path / "b.txt").write_text("")  # an image without defects
    (tmp_path / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    result = ingest(tmp_path, tmp_path)
    assert {s.item: len(s.boxes) for s in result.samples} == {"a.txt": 1, "b.txt": 0}
    assert [r.reason for r in result.rejected_boxes if r.item.startswith("a.txt")] == [
        "yolo_line_malformed", "yolo_line_malformed", "class_id_out_of_range",
        "yolo_coords_out_of_range", "yolo_coords_out_of_range", "box_degenerate",
        "yolo_line_malformed"]
    assert {r.item: r.reason for r in result.rejected} == {"orphan.txt": "image_missing",
                                                          "unlabelled.jpg": "annotation_missing"}
    assert result.boxes_found == 1 + len(result.rejected_boxes) == 9
    box = result.samples[0].boxes[0]
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((40, 20, 60, 30))


def test_without_classes_txt_the_config_labels_name_the_ids(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    assert ingest(tmp_path, tmp_path, labels=["crack", "dent"]).samples[0].boxes[0].label == "dent"
    missing = ingest(tmp_path, tmp_path)
    assert [(r.item, r.reason) for r in missing.rejected] == [("a.txt", "classes_missing")]
    assert [r.reason for r in missing.rejected_boxes] == ["image_rejected"]
