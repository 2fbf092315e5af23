"""Suspect labels: a box the model is sure of where no label is, another class, a label over
nothing and a loose box are each listed under their kind; the test split is only counted."""

import json

import datasets
import pytest

from tasks.core.records import Box
from tasks.predict.folder import PredictSettings
from tasks.predict.suspects import find_suspects, label_suspects
from tasks.scoring.coco import iou
from tasks.scoring.score import original_rows, truth_boxes
from tests.scoring.test_tiled_scoring import ScriptedByCall, answer


def box(x: float, label: str = "scratch", width: float = 20) -> Box:
    return Box(x1=x, y1=10, x2=x + width, y2=30, label=label)


def test_each_kind_of_disagreement_is_named():
    labels = [box(0), box(100, "spot"), box(200), box(300)]
    model = [box(0), box(100, "scratch"), box(300, width=50), box(500, "spot"), box(200)]
    scores = [0.9, 0.8, 0.9, 0.7, 0.1]  # the last is below the threshold: not confident
    found = label_suspects(labels, model, scores, threshold=0.5)
    kinds = sorted((f["kind"], f["class"]) for f in found)
    assert kinds == [("loose_box", "scratch"), ("possible_missing", "spot"),
                     ("possible_spurious", "scratch"), ("possible_wrong_class", "spot")]
    wrong = next(f for f in found if f["kind"] == "possible_wrong_class")
    assert wrong["model_class"] == "scratch" and wrong["label"] == [100, 10, 120, 30]
    # A class's own threshold: at 0.05 for scratch, the 0.1 box counts and the label is seen.
    again = label_suspects(labels, model, scores, 0.5, {"scratch": 0.05})
    assert "possible_spurious" not in {f["kind"] for f in again}
    assert label_suspects(labels[:1], model[:1], scores[:1], 0.5) == []


@pytest.fixture
def processor(tiny_florence):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_florence)


def test_a_scripted_model_finds_the_injected_label_errors(synthetic_dataset, tmp_path, processor):
    loaded = datasets.load_dataset(str(synthetic_dataset))
    names = ["patch", "scratch", "spot"]
    outputs, injected, far = [], {}, Box(x1=0, y1=0, x2=5, y2=5, label="spot")
    for split in ("train", "validation", "test"):
        for row in original_rows(loaded[split]):
            truth = truth_boxes(row, names)
            said = list(truth)
            if split == "train" and truth and "missing" not in injected \
                    and all(iou(far, b) < 0.05 for b in truth):
                said.append(far)  # the model sees a defect the labels do not have
                injected["missing"] = row["image_id"]
            elif split == "train" and len(truth) == 1 and "wrong" not in injected:
                said = [truth[0].model_copy(update={"label": "patch" if truth[0].label != "patch"
                                                    else "spot"})]
                injected["wrong"] = (row["image_id"], truth[0].label)
            elif split in ("train", "test") and len(truth) == 1 and f"spurious-{split}" not in injected:
                said = []  # the model sees nothing where the label is
                injected[f"spurious-{split}"] = row["image_id"]
            outputs.append(answer(processor, said, row["width"], row["height"]))
    assert len(injected) == 4
    model = ScriptedByCall(outputs, processor.tokenizer.eos_token_id, len(processor.tokenizer))
    result = find_suspects(synthetic_dataset, tmp_path, model, processor,
                           PredictSettings(labels=names, batch_size=4, max_new_tokens=256))
    listed = {(s["kind"], s["image_id"]) for s in result["suspects"]}
    assert listed == {("possible_missing", injected["missing"]),
                      ("possible_wrong_class", injected["wrong"][0]),
                      ("possible_spurious", injected["spurious-train"])}
    wrong = next(s for s in result["suspects"] if s["kind"] == "possible_wrong_class")
    assert wrong["class"] == injected["wrong"][1]
    # The test split's suspect is counted, never listed.
    assert sum(result["counts"]["possible_spurious"].values()) == 2
    assert sum(result["listed_counts"]["possible_spurious"].values()) == 1
    assert json.loads((tmp_path / "suspects.json").read_text())["images_listed"] == 3
    for folder in ("labels", "model", "images"):
        assert len(list((tmp_path / folder).iterdir())) == 3, folder
    assert b'verified="no"' in next((tmp_path / "model").glob("*.xml")).read_bytes()
    assert (tmp_path / "suspects_gallery.png").stat().st_size > 5_000
