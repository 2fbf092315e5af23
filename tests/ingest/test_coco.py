"""COCO ingest: the sahi export from ../shared/data and generated trouble."""

import json
from pathlib import Path

import pytest
from PIL import Image

from tasks.core.labels import LabelRules
from tasks.ingest.coco import CocoUnreadable, ingest_coco
from tasks.ingest.sources import list_source
from tests.support import shared_data


def ingest(images: Path, json_path: Path, labels=None):
    return ingest_coco(images, json_path, list_source(images, json_path, ".json"),
                       LabelRules(allowed=None if labels is None else frozenset(labels)))


def test_sahi_terrain_missing_image_is_quarantined_and_the_others_kept():
    root = shared_data("sahi_terrain_coco")
    result = ingest(root / "images", root / "annotations" / "terrain_all_coco.json")
    kept = {s.item: s for s in result.samples}
    assert set(kept) == {"terrain1.jpg", "terrain2.png"}
    why = {r.item: r.reason for r in result.rejected}
    assert why["terrain3.png"] == "image_missing"
    # In the folder, never mentioned by the JSON: reported, not silently skipped.
    assert why["terrain2_gray.png"] == why["terrain4.png"] == "annotation_missing"
    assert result.boxes_found == 22
    assert sum(len(s.boxes) for s in kept.values()) + len(result.rejected_boxes) == 22
    # `area` in this file is the image's area; boxes come from bbox only.
    box = kept["terrain1.jpg"].boxes[0]
    assert (box.width * box.height) < 100_000


def write_coco(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_generated_coco_quirks(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (100, 80), 100).save(images / name)
    data = {
        "images": [
            {"id": 0, "file_name": "a.jpg", "width": 100, "height": 80},  # ids from 0
            {"id": "1", "file_name": "b.jpg", "width": 100, "height": 80},  # a string id
            {"id": 2, "file_name": "c.jpg"},  # no size: measured later; no boxes: a negative
            {"id": 2, "file_name": "c.jpg"},  # duplicate id
            {"id": 3, "file_name": "../outside.jpg"},
            {"id": 4, "file_name": "/etc/passwd"},
        ],
        "categories": [{"id": 0, "name": "dent"}, {"id": 7, "name": "never used"}],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 0, "bbox": [10, 10, 20, 20], "area": 1e9},
            {"id": 1, "image_id": 0, "category_id": 0, "bbox": [10, 10, 20, 20]},  # duplicate id
            {"id": 2, "image_id": "1", "category_id": 0, "bbox": [5.5, 5, 10, 10]},
            {"id": 3, "image_id": 99, "category_id": 0, "bbox": [1, 1, 2, 2]},  # orphan
            {"id": 4, "image_id": 0, "category_id": 5, "bbox": [1, 1, 2, 2]},  # unknown category
            {"id": 5, "image_id": 0, "category_id": 0, "bbox": [1, 1, 0, 2]},  # zero width
            {"id": 6, "image_id": 0, "category_id": 0, "bbox": [1, 1, -3, 2]},  # negative
            {"id": 7, "image_id": 0, "category_id": 0, "bbox": "oops"},
            {"id": 8, "image_id": 3, "category_id": 0, "bbox": [1, 1, 2, 2]},
            {"id": 9, "image_id": 0, "category_id": 0, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        ],
    }
    result = ingest(images, write_coco(tmp_path / "coco.json", data))
    kept = {s.item: s for s in result.samples}
    assert set(kept) == {"a.jpg", "b.jpg", "c.jpg"}
    assert kept["c.jpg"].boxes == [] and kept["c.jpg"].declared_width is None
    assert kept["b.jpg"].boxes[0].x1 == 5.5
    assert len(kept["a.jpg"].boxes) == 1
    assert sorted((r.item, r.reason) for r in result.rejected) == [
        ("../outside.jpg", "path_outside_source"),
        ("/etc/passwd", "path_outside_source"),
        ("c.jpg", "duplicate_id"),
    ]
    assert sorted(r.reason for r in result.rejected_boxes) == [
        "annotation_orphan", "box_crowd", "box_degenerate", "box_degenerate", "box_invalid",
        "duplicate_id", "image_rejected", "unknown_label"]
    assert result.boxes_found == 10


def test_an_unreadable_coco_file_stops_with_one_line_naming_it(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (10, 10)).save(images / "a.png")
    with pytest.raises(CocoUnreadable, match=r"c\.json: not a COCO file"):
        ingest(images, write_coco(tmp_path / "c.json", {"images": "nope"}))
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(CocoUnreadable, match=r"d\.json: not readable as JSON"):
        ingest(images, tmp_path / "d.json")
    (tmp_path / "deep.json").write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CocoUnreadable, match=r"deep\.json: nested too deeply"):
        ingest(images, tmp_path / "deep.json")


def test_a_category_id_given_two_names_gives_its_boxes_neither(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 40)).save(images / "a.png")
    result = ingest(images, write_coco(tmp_path / "c.json", {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}],
        "categories": [{"id": 1, "name": "scratch"}, {"id": 1, "name": "crack"},
                       {"id": 2, "name": "spot"}, {"id": 2, "name": "spot"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [9, 9, 5, 5]}]}))
    assert [b.label for b in result.samples[0].boxes] == ["spot"]  # the same name twice is one
    [dropped] = result.rejected_boxes
    assert dropped.reason == "duplicate_id" and "scratch and crack" in dropped.detail


def test_file_names_written_relative_to_the_json_are_found_inside_the_images_folder(tmp_path):
    root = tmp_path / "export"
    images = root / "images"
    images.mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"")
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (20, 20)).save(images / name)
    (root / "annotations").mkdir()
    result = ingest(images, write_coco(root / "annotations" / "c.json", {"images": [
        {"id": 1, "file_name": "a.png"},  # relative to the images folder
        {"id": 2, "file_name": "../images/b.png"},  # relative to the JSON's folder
        {"id": 3, "file_name": "../../outside.png"}]}))  # relative to the JSON, leaves the source
    assert [s.item for s in result.samples] == ["a.png", "../images/b.png"]
    assert {r.item: r.reason for r in result.rejected} == {
        "../../outside.png": "path_outside_source", "c.png": "annotation_missing"}
    beside = ingest(images, write_coco(root / "c.json", {"images": [
        {"id": 1, "file_name": "images/c.png"}]}))  # the JSON beside the images folder
    assert [Path(s.image_path).name for s in beside.samples] == ["c.png"]
