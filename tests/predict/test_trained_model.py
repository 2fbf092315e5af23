"""The labelling loop with a real model: the tiny Florence-2 trained (in full, from random
weights) on clean labels until it knows its training images. Labels then corrupted on purpose are
listed as suspects under the right kind; in the labelling queue, the images it knows carry no
reason to be labelled, and a near-copy of one ranks last."""

import csv
import shutil
from pathlib import Path

import datasets
import pytest
from PIL import ImageEnhance

from tasks.core.config import ModelConfig, TrainConfig
from tasks.demo.sample_data import generate
from tasks.predict.folder import PredictSettings
from tasks.predict.queue import queue_inbox
from tasks.predict.suspects import find_suspects
from tasks.scoring.coco import iou
from tasks.scoring.generation import predict_batch
from tasks.scoring.score import original_rows, truth_boxes
from tasks.training.models import load_finetuned_detector
from tasks.training.train import train_step
from tests.support import prepare_without_prefect

pytestmark = [pytest.mark.slow, pytest.mark.trains]

NAMES = ["patch", "scratch", "spot"]
SPLIT = {"train": 0.75, "validation": 0.25, "test": 0.0}
# The known answers rest on the model's confidence: at 0.3, a box it learnt (scores ~0.8-0.95)
# is well outside the "unsure" band (0.15-0.6) and counts as confident for the suspects.
SETTINGS = PredictSettings(threshold=0.3, labels=NAMES, batch_size=8, max_new_tokens=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """12 images of one defect each; 800 steps at a constant 3e-3 (about 45 s on 2 cores) make
    the model repeat the labels of its training images (and their mirrors: hflip is on)."""
    root = tmp_path_factory.mktemp("trained")
    generate(root / "source", count=12, size=64, seed=5, troubles=False, max_defects=1,
             extent=(0.3, 0.5))
    dataset = prepare_without_prefect(root / "source", root / "dataset", root / "home", SPLIT)
    train_step(dataset, root / "run", ModelConfig(checkpoint="tiny", lora=None),
               TrainConfig(lr=3e-3, lr_scheduler="constant_with_warmup", batch_size=8,
                           max_steps=800, eval_steps=800, seed=1))
    processor, model = load_finetuned_detector(root / "run" / "model")
    return root, processor, model.eval()


def learnt_images(root: Path, processor, model) -> list[dict]:
    """The training images whose every label the model repeats, confidently (at more than twice
    the threshold), on the image and on its mirror image (it trained on both: hflip is on): the
    ones whose answers are known (a model this small may mix up one of them)."""
    from PIL import ImageOps

    rows = original_rows(datasets.load_dataset(str(root / "dataset"))["train"])
    images = list(rows["image"])
    seen = predict_batch(model, processor, images, set(NAMES), 1, 64)
    mirrored = predict_batch(model, processor, [ImageOps.mirror(i) for i in images], set(NAMES), 1, 64)

    def repeats(truth: list, prediction) -> bool:
        return len(prediction.boxes) == len(truth) and all(
            score > 2 * SETTINGS.threshold and label.label == box.label and iou(label, box) > 0.8
            for label, box, score in zip(truth, prediction.boxes, prediction.scores, strict=True))

    learnt = []
    for row, image, prediction, mirror in zip(rows, images, seen, mirrored, strict=True):
        truth = truth_boxes(row, NAMES)
        flipped = [b.model_copy(update={"x1": image.width - b.x2, "x2": image.width - b.x1})
                   for b in truth]
        if repeats(truth, prediction) and repeats(flipped, mirror):
            learnt.append(row)
    return learnt


def test_labels_corrupted_after_training_are_listed_under_their_kind(trained, tmp_path):
    root, processor, model = trained
    learnt = learnt_images(root, processor, model)
    assert len(learnt) >= 3, "the model did not learn its training images"
    source = tmp_path / "source"
    shutil.copytree(root / "source", source)
    missing, wrong, spurious = (row["source_id"] for row in learnt[:3])
    xml = {item: source / "annotations" / item for item in (missing, wrong, spurious)}
    text = xml[wrong].read_text()
    label = text.split("<name>")[1].split("</name>")[0]
    other = next(name for name in NAMES if name != label)
    xml[wrong].write_text(text.replace(f"<name>{label}</name>", f"<name>{other}</name>"))
    text = xml[missing].read_text()
    xml[missing].write_text(text[:text.index("<object>")] + "</annotation>\n")
    text = xml[spurious].read_text()
    box = text[text.index("<object>"):text.index("</object>") + len("</object>")]
    far = box.replace(box[box.index("<bndbox>"):box.index("</bndbox>")], "<bndbox><xmin>1</xmin>"
                      "<ymin>1</ymin><xmax>6</xmax><ymax>6</ymax>")
    xml[spurious].write_text(text.replace("</annotation>", far + "</annotation>"))
    corrupted = prepare_without_prefect(source, tmp_path / "dataset", tmp_path / "home", SPLIT)

    result = find_suspects(corrupted, tmp_path / "suspects", model, processor, SETTINGS)
    listed = {(s["kind"], s["image_id"]) for s in result["suspects"]}
    assert ("possible_missing", missing) in listed
    assert ("possible_wrong_class", wrong) in listed
    assert ("possible_spurious", spurious) in listed
    # The other images it learnt have no suspect: their labels are the ones it was taught.
    clean = {row["source_id"] for row in learnt[3:]}
    assert not {image for _, image in listed} & clean


def test_images_it_knows_are_queued_as_known_and_a_near_copy_ranks_last(trained, tmp_path):
    """What the model is trained to have, by a margin: on its training images (and their mirrors)
    it repeats every label at more than twice the threshold, so they carry no reason to be
    labelled (no box near the threshold, none its mirror disagrees with) and rank below every
    image it is less sure of. How it answers images it never saw is not trained: whatever it is, they
    are queued with the reasons they earn, and a near copy of a known image ranks last."""
    root, processor, model = trained
    learnt = learnt_images(root, processor, model)[:3]
    unseen = original_rows(datasets.load_dataset(str(root / "dataset"))["validation"])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for row in learnt:
        row["image"].save(inbox / f"known-{Path(row['source_id']).stem}.png")
    for row in unseen:
        row["image"].save(inbox / f"new-{Path(row['source_id']).stem}.png")
    copy = ImageEnhance.Brightness(learnt[0]["image"].convert("RGB")).enhance(1.02)
    copy.save(inbox / "z-copy.png")  # the same picture, a shade brighter

    summary = queue_inbox(inbox, tmp_path / "queue", model, processor, SETTINGS)
    with open(tmp_path / "queue" / "queue.csv") as handle:
        rows = list(csv.DictReader(handle))
    order = [row["image"] for row in rows]
    assert summary["queued"] == len(order) == len(learnt) + len(unseen) + 1
    known = [order.index(f"known-{Path(row['source_id']).stem}.png") for row in learnt]
    for index in known:
        assert "near_threshold" not in rows[index]["reasons"], rows[index]
        assert "flip_disagrees" not in rows[index]["reasons"], rows[index]
    # Any image it is less sure of than it is of a known one ranks above the known ones.
    known_score = max(float(rows[index]["score"]) for index in known)
    for index, row in enumerate(rows):
        reasons = dict(part.rsplit(" ", 1) for part in row["reasons"].split("; ") if part)
        if float(reasons.get("near_threshold", 0)) + float(reasons.get("flip_disagrees", 0)) \
                > known_score:
            assert index < min(known), rows
    assert order[-1] == "z-copy.png" and "near_duplicate_of known-" in rows[-1]["reasons"]
