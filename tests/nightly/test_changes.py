"""What changed since last night, from two real prepared datasets: images added, removed,
relabelled and replaced, the class histogram's shift and the test split's growth."""

import hashlib
from collections import Counter
from pathlib import Path
from xml.etree.ElementTree import fromstring

from PIL import Image

from tasks.core.config import SplitConfig
from tasks.core.splits import split_of
from tasks.demo.sample_data import generate
from tasks.nightly.changes import (
    changes_markdown,
    changes_step,
    dataset_index,
    save_index,
    what_changed,
)
from tests.support import prepare_without_prefect


def from_the_source_files(source: Path) -> tuple[Counter, int]:
    """(boxes per class in the source XMLs, how many of their images the split puts in test),
    read from the files themselves, not from the published dataset the code under test reads.
    The ratios are prepare_without_prefect's."""
    ratios = SplitConfig(train=0.7, validation=0.15, test=0.15)
    classes: Counter = Counter()
    tests = 0
    for xml in (source / "annotations").glob("*.xml"):
        root = fromstring(xml.read_bytes())
        classes.update(obj.findtext("name") for obj in root.iter("object"))
        image = source / "images" / root.findtext("filename")
        tests += split_of(hashlib.sha256(image.read_bytes()).hexdigest(), ratios) == "test"
    return classes, tests


def test_added_removed_relabelled_and_replaced_images_are_each_counted(tmp_path):
    source, home = tmp_path / "source", tmp_path / "home"
    generate(source, count=40, size=64, seed=4, troubles=False, max_defects=1)
    night1 = prepare_without_prefect(source, tmp_path / "night1", home)
    work = tmp_path / "work"
    work.mkdir()
    first, index = changes_step(work, night1)
    assert first["first_night"] and first["images_added"] == 40 == first["images_after"]
    save_index(work, index)
    classes_before, tests_before = from_the_source_files(source)

    generate(source, count=10, size=64, seed=4, start=40, troubles=False, max_defects=1)
    xmls = sorted((source / "annotations").glob("*.xml"))
    removed = next(source.glob(f"images/{xmls[1].stem}.*"))
    removed.unlink()
    xmls[1].unlink()
    relabelled = xmls[2].read_text()
    label = relabelled.split("<name>")[1].split("</name>")[0]
    other = "spot" if label != "spot" else "patch"
    xmls[2].write_text(relabelled.replace(f"<name>{label}</name>", f"<name>{other}</name>"))
    replaced = next(source.glob(f"images/{xmls[3].stem}.*"))
    with Image.open(replaced) as image:
        image.convert("RGB").rotate(180).save(replaced.with_suffix(".png"))
    if replaced.suffix != ".png":
        replaced.unlink()
        xmls[3].write_text(xmls[3].read_text().replace(replaced.name, replaced.stem + ".png"))
    night2 = prepare_without_prefect(source, tmp_path / "night2", home)

    changes, after = changes_step(work, night2)
    assert not changes["first_night"]
    assert (changes["images_added"], changes["images_removed"], changes["images_relabelled"],
            changes["images_replaced"]) == (10, 1, 1, 1)
    assert changes["images_after"] == 49 == len(after)
    classes_after, tests_after = from_the_source_files(source)
    assert classes_after != classes_before and tests_after != tests_before  # something to show
    assert changes["classes"] == {
        name: {"before": classes_before[name], "after": classes_after[name],
               "delta": classes_after[name] - classes_before[name]}
        for name in classes_before | classes_after}
    assert changes["test_images"] == {"before": tests_before, "after": tests_after}
    assert "10 added, 1 removed, 1 relabelled, 1 replaced" in changes_markdown(changes)


def test_what_changed_between_two_known_indexes():
    def entry(sha: str, split: str, labels: dict[str, int], boxes: str) -> dict:
        return {"sha256": sha, "split": split, "labels": labels, "boxes": boxes}

    before = {"kept.xml": entry("K", "test", {"patch": 1}, "k"),
              "same.xml": entry("S", "train", {"scratch": 2}, "s"),
              "gone.xml": entry("G", "test", {"spot": 1}, "g"),
              "relabelled.xml": entry("R", "test", {"scratch": 1}, "r1"),
              "new pixels.xml": entry("P", "validation", {"spot": 1}, "p"),
              "new everything.xml": entry("E", "train", {"scratch": 1}, "e1")}
    after = {"kept.xml": entry("K", "test", {"patch": 1}, "k"),
             "same.xml": entry("S", "train", {"scratch": 2}, "s"),
             "relabelled.xml": entry("R", "test", {"patch": 1}, "r2"),  # scratch -> patch
             "new pixels.xml": entry("P2", "test", {"spot": 1}, "p"),  # now hashes into test
             "new everything.xml": entry("E2", "train", {"spot": 1}, "e2"),  # replaced, not both
             "added.xml": entry("A", "train", {"scratch": 3}, "a"),
             "added test.xml": entry("T", "test", {"spot": 2}, "t")}
    changes = what_changed(before, after)
    assert changes == {
        "first_night": False, "images_before": 6, "images_after": 7,
        "images_added": 2, "images_removed": 1, "images_replaced": 2, "images_relabelled": 1,
        "changed_ids": ["added test.xml", "added.xml", "new everything.xml", "new pixels.xml",
                        "relabelled.xml"],
        "test_images": {"before": 3, "after": 4},
        "classes": {"patch": {"before": 1, "after": 2, "delta": 1},
                    "scratch": {"before": 4, "after": 5, "delta": 1},
                    "spot": {"before": 2, "after": 4, "delta": 2}}}
    assert list(changes["classes"]) == ["patch", "scratch", "spot"]
    assert changes_markdown(changes).splitlines()[2:5] == [
        "6 -> 7 images: 2 added, 1 removed, 1 relabelled, 2 replaced (same name, other pixels).",
        "", "Test split: 3 -> 4 images."]
    assert "| spot | 2 | 4 | +2 |" in changes_markdown(changes)
    first = what_changed(None, after)
    assert (first["first_night"], first["images_added"], first["test_images"]) == (
        True, 7, {"before": 0, "after": 4})
    assert first["changed_ids"] == []  # a first night has no "since": the suspects wait


def test_a_tiled_image_is_one_entry_with_its_boxes_back_in_image_coordinates(tmp_path):
    from tasks.core.config import DatasetConfig
    from tasks.dataset.local_run import prepare_steps
    from tests.flows.test_targets import dense_boxes, write_image

    source = tmp_path / "source"
    write_image(source, "pcb", dense_boxes(300))
    config = DatasetConfig.model_validate({
        "name": "dense", "grayscale": "keep", "tiling": {"size": 128},
        "split": {"train": 1.0, "validation": 0.0, "test": 0.0},
        "source": {"format": "voc", "images": source / "images",
                   "annotations": source / "annotations"}})
    prepare_steps(config, tmp_path / "dataset", tmp_path / "home")
    index = dataset_index(tmp_path / "dataset")
    assert list(index) == ["pcb.xml"] and index["pcb.xml"]["labels"] == {"scratch": 300}
