"""What changed since last night, from two real prepared datasets: images added, removed,
relabelled and replaced, the class histogram's shift and the test split's growth."""

from PIL import Image

from tasks.demo.sample_data import generate
from tasks.nightly.changes import changes_markdown, changes_step, dataset_index, save_index
from tests.support import prepare_without_prefect


def test_added_removed_relabelled_and_replaced_images_are_each_counted(tmp_path):
    source, home = tmp_path / "source", tmp_path / "home"
    generate(source, count=40, size=64, seed=4, troubles=False, max_defects=1)
    night1 = prepare_without_prefect(source, tmp_path / "night1", home)
    work = tmp_path / "work"
    work.mkdir()
    first, index = changes_step(work, night1)
    assert first["first_night"] and first["images_added"] == 40 == first["images_after"]
    save_index(work, index)

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
    before = dataset_index(night1)
    for name, shift in changes["classes"].items():
        assert shift["after"] == sum(e["labels"].get(name, 0) for e in after.values())
        assert shift["before"] == sum(e["labels"].get(name, 0) for e in before.values())
        assert shift["delta"] == shift["after"] - shift["before"]
    assert changes["test_images"] == {"before": sum(e["split"] == "test" for e in before.values()),
                                      "after": sum(e["split"] == "test" for e in after.values())}
    assert "10 added, 1 removed, 1 relabelled, 1 replaced" in changes_markdown(changes)


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
