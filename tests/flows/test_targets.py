"""Targets the model can learn: clean class names in any language, none over the token budget
(issue 12's acceptance case, through the real prepare flow)."""

import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from flows.prepare import prepare
from tasks.dataset.budget import target_tokens
from tasks.demo.sample_data import DrawnBox, voc_xml

pytestmark = pytest.mark.usefixtures("prefect_server")
LOC = re.compile(r"<loc_\d+>")


def write_image(folder: Path, stem: str, boxes: list[DrawnBox], shade: int = 0,
                size: int = 400) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (100 + shade, 120, 120)).save(folder / "images" / f"{stem}.png")
    (folder / "annotations" / f"{stem}.xml").write_text(
        voc_xml(f"{stem}.png", size, size, 3, boxes), encoding="utf-8")


def dense_boxes(count: int) -> list[DrawnBox]:
    """`count` small defects on a 20 x 15 grid of 20 px cells (a PCB's worth)."""
    return [DrawnBox("scratch", 2 + (n % 20) * 20, 2 + (n // 20) * 20, 14 + (n % 20) * 20,
                     14 + (n // 20) * 20) for n in range(count)]


def test_markup_case_variants_any_language_and_a_300_box_image_are_all_accounted_for(tmp_path, home):
    source = tmp_path / "source"
    write_image(source, "dense", dense_boxes(300))
    names = ["scratch", "Scratch", " scratch", "傷", "欠け", "défaut", "a<b", "<loc_5>", "</s>", "Spot"]
    for number, name in enumerate(names * 2):
        write_image(source, f"img{number:02d}", [DrawnBox(name, 10, 10, 90, 90),
                                                 DrawnBox("spot", 200, 200, 260, 260)], number + 1)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: hygiene\nsource: {{format: voc, images: {source / 'images'}, "
                      f"annotations: {source / 'annotations'}}}\ngrayscale: keep\n"
                      "label_map: {Spot: spot}\nmerge_case_variants: true\n"
                      "split: {train: 0.6, validation: 0.2, test: 0.2}\n", encoding="utf-8")
    report = prepare(str(config), str(tmp_path / "out"), str(home))

    images, boxes = report["images"], report["boxes"]
    assert images["found"] == 21 == images["kept"] + images["quarantined"]
    assert boxes["found"] == 300 + 40 == boxes["kept"] + sum(boxes["dropped"].values())
    assert [(q["item"], q["reason"]) for q in report["quarantine"]] == [
        ("dense.xml", "target_too_long")]
    assert boxes["dropped"] == {"image_rejected": 300, "label_invalid": 6}
    assert report["targets"]["over_budget"] == 1
    assert report["targets"]["max_tokens"] > 1024 >= report["targets"]["budget"]
    assert report["classes"] == {"défaut": 2, "scratch": 6, "spot": 22, "傷": 2, "欠け": 2}
    # (LabelImg's XML reader trims " scratch": two spellings of scratch are left to merge)
    assert report["label_collisions"] == [
        {"key": "scratch", "names": {"Scratch": 2, "scratch": 4 + 300}, "merged_into": "scratch"},
        {"key": "spot", "names": {"Spot": 2, "spot": 20}, "merged_into": "spot"}]

    dataset = datasets.load_dataset(str(tmp_path / "out" / "dataset"))
    rows = [row for split in dataset.values() for row in split]
    assert rows and all(target_tokens(row["target"]) <= 1024 for row in rows)
    assert all("<" not in LOC.sub("", row["target"]) for row in rows)
    spoken = {label for row in rows for label in re.findall(r"([^<>]+)<loc_", row["target"])}
    assert spoken == {"défaut", "scratch", "spot", "傷", "欠け"}


def dense_source(tmp_path: Path) -> Path:
    source = tmp_path / "dense-source"
    for number in range(2):
        write_image(source, f"pcb{number}", dense_boxes(300), shade=number)
    write_image(source, "sparse", [DrawnBox("scratch", 10, 10, 90, 90)], shade=7)
    return source


def config_with(tmp_path: Path, source: Path, split: str) -> Path:
    config = tmp_path / f"{split}.yaml"
    config.write_text(f"name: dense\nsource: {{format: voc, images: {source / 'images'}, "
                      f"annotations: {source / 'annotations'}}}\ngrayscale: keep\n"
                      f"split: {split}\ntiling: {{size: 128, overlap: 0.2}}\n", encoding="utf-8")
    return config


def test_with_tiling_dense_training_images_become_tiles_and_no_target_passes_the_budget(tmp_path, home):
    source = dense_source(tmp_path)
    config = config_with(tmp_path, source, "{train: 1.0, validation: 0.0, test: 0.0}")
    report = prepare(str(config), str(tmp_path / "out"), str(home))
    assert report["images"] == {"found": 3, "kept": 3, "quarantined": 0, "dropped_grayscale": 0}
    assert report["boxes"]["found"] == 601 == report["boxes"]["kept"]
    assert report["targets"]["tiling"] == {"images": 2, "tiles": 32, "sliced_test_images": 0}
    rows = datasets.load_dataset(str(tmp_path / "out" / "dataset"))["train"]
    originals = [row for row in rows if row["augmentation"] == "none"]
    assert len(originals) == 32 + 1
    assert all(target_tokens(row["target"]) <= 1024 for row in rows)
    assert {row["source_id"] for row in originals} == {"pcb0.xml", "pcb1.xml", "sparse.xml"}


def test_dense_test_images_are_scored_whole_through_tiles_with_no_output_cut(tmp_path, home,
                                                                           tiny_florence):
    from transformers import AutoProcessor

    from tasks.core.config import TilingConfig
    from tasks.images.tiles import boxes_in_window, tile_windows
    from tasks.scoring.score import score_detector, truth_boxes
    from tests.scoring.test_tiled_scoring import ScriptedByCall, answer

    source = dense_source(tmp_path)
    config = config_with(tmp_path, source, "{train: 0.0, validation: 0.0, test: 1.0}")
    report = prepare(str(config), str(tmp_path / "out"), str(home))
    assert report["targets"]["tiling"]["sliced_test_images"] == 2
    rows = datasets.load_dataset(str(tmp_path / "out" / "dataset"))["test"]
    processor = AutoProcessor.from_pretrained(tiny_florence)
    # A detector that answers every tile (and the sparse image) perfectly, in call order.
    outputs = []
    for start in range(0, len(rows), 8):
        batch = [rows[i] for i in range(start, min(start + 8, len(rows)))]
        outputs += [answer(processor, truth_boxes(row, ["scratch"]), row["width"], row["height"])
                    for row in batch if not row["sliced"]]
        for row in (row for row in batch if row["sliced"]):
            outputs += [answer(processor, boxes_in_window(truth_boxes(row, ["scratch"]), w, 0.5, 1),
                               w[2], w[3]) for w in tile_windows(row["width"], row["height"], 128, 0.2)]
    model = ScriptedByCall(outputs, processor.tokenizer.eos_token_id, len(processor.tokenizer))
    scores = score_detector(model, processor, rows, ["scratch"], batch_size=8,
                            tiling=TilingConfig(size=128, overlap=0.2), max_new_tokens=512)
    assert scores.truncated_outputs == 0 and scores.parse_failures == 0
    assert sorted(len(boxes) for boxes, _ in scores.predictions) == [1, 300, 300]
    assert scores.map50 == pytest.approx(1.0)  # on the whole images, against all 601 boxes
