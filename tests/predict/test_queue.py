"""The labelling queue: an image the model sees differently in its mirror, or is unsure of, ranks
above one it is sure of; a near-duplicate ranks below every other; a verified image is done."""

import csv
import random
import shutil

import pytest
from PIL import Image, ImageDraw

from tasks.core.records import Box
from tasks.predict.folder import PredictSettings
from tasks.predict.queue import (
    DUPLICATE_BITS,
    Candidate,
    average_hash,
    mirrored_back,
    queue_inbox,
    rank_queue,
)
from tests.scoring.test_tiled_scoring import ScriptedByCall, answer


def box(x: float, label: str = "scratch") -> Box:
    return Box(x1=x, y1=10, x2=x + 30, y2=30, label=label)


def test_unsure_and_disagreeing_images_rank_first_and_a_near_duplicate_last():
    sure = Candidate("sure.png", [box(10)], [0.9], [box(10)], image_hash=0)
    torn = Candidate("torn.png", [box(10)], [0.9], [], image_hash=(1 << 40) - 1)
    unsure = Candidate("unsure.png", [box(10), box(50)], [0.3, 0.2], [box(10)],
                       image_hash=(1 << 64) - 1)
    twin = Candidate("twin.png", [box(10)], [0.9], [], image_hash=((1 << 40) - 1) ^ 0b101)
    ranked = rank_queue([sure, twin, torn, unsure], threshold=0.25, per_class={})
    assert [c.item for c in ranked] == ["unsure.png", "torn.png", "sure.png", "twin.png"]
    assert ranked[0].reasons["near_threshold"] > 1  # 0.3 and 0.2, both within 2x of 0.25
    assert ranked[1].reasons["flip_disagrees"] == 1  # its mirror found nothing
    assert "near_threshold" not in ranked[2].reasons and "flip_disagrees" not in ranked[2].reasons
    assert ranked[3].reasons["near_duplicate_of"] == "torn.png" and twin.score == torn.score
    # A class rare in the dataset counts too; a class's own threshold decides "unsure".
    rare = Candidate("rare.png", [box(10, "pit")], [0.9], [box(10, "pit")], image_hash=7 << 20)
    ranked = rank_queue([sure, rare], 0.25, {}, {"scratch": 100, "pit": 5})
    assert ranked[0].item == "rare.png" and ranked[0].reasons["rare_class"] == 0.95
    assert rank_queue([sure], 0.25, {"scratch": 0.8})[0].reasons["near_threshold"] > 0.8


def test_mirrored_boxes_come_back_to_the_images_coordinates_and_copies_hash_alike():
    assert mirrored_back([Box(x1=60, y1=10, x2=90, y2=30, label="s")], 100) == [
        Box(x1=10, y1=10, x2=40, y2=30, label="s")]
    def picture(seed: int) -> Image.Image:  # a few shapes on grey: a defect photo's make-up
        rng = random.Random(seed)
        image = Image.new("RGB", (120, 80), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            x, y = rng.randrange(100), rng.randrange(60)
            draw.rectangle((x, y, x + rng.randrange(8, 30), y + rng.randrange(8, 30)),
                           fill=tuple(rng.randrange(256) for _ in range(3)))
        return image

    # (Not noise: a noise picture's pixels sit at its mean, and a resized copy's bits flip.)
    noise, other = picture(1), picture(2)
    def apart(a, b) -> int:
        return bin(average_hash(a) ^ average_hash(b)).count("1")

    assert apart(noise, noise.resize((60, 40))) <= DUPLICATE_BITS < apart(noise, other)


@pytest.fixture
def processor(tiny_florence):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_florence)


def test_the_queue_of_an_inbox_with_a_scripted_model(tmp_path, processor):
    inbox, size = tmp_path / "inbox", (100, 60)
    inbox.mkdir()
    for name in ("a", "b", "d"):
        Image.effect_noise(size, 40).convert("RGB").save(inbox / f"{name}.png")
    shutil.copy(inbox / "a.png", inbox / "c.png")  # the same picture again
    (inbox / "d.xml").write_text('<annotation verified="yes"><filename>d.png</filename>'
                                 "</annotation>\n")  # a person checked it: not queued
    seen, mirrored = [Box(x1=10, y1=10, x2=40, y2=30, label="scratch")], [
        Box(x1=60, y1=10, x2=90, y2=30, label="scratch")]
    # One generation per image, then one for its mirror, in file order: a, b, c.
    outputs = [answer(processor, seen, *size), answer(processor, mirrored, *size),  # a agrees
               answer(processor, seen, *size), answer(processor, [], *size),  # b: mirror finds none
               answer(processor, seen, *size), answer(processor, mirrored, *size)]  # c = a
    model = ScriptedByCall(outputs, processor.tokenizer.eos_token_id, len(processor.tokenizer))
    result = queue_inbox(inbox, tmp_path / "out", model, processor,
                         PredictSettings(labels=["scratch"], batch_size=1))
    assert (result["images"], result["verified"], result["queued"]) == (4, 1, 3)
    rows = list(csv.DictReader(open(tmp_path / "out" / "queue.csv", encoding="utf-8")))
    assert [row["image"] for row in rows] == ["b.png", "a.png", "c.png"]
    assert "flip_disagrees 1.0" in rows[0]["reasons"]
    assert "near_duplicate_of a.png" in rows[2]["reasons"]
    assert (tmp_path / "out" / "queue_gallery.png").stat().st_size > 5_000
