"""Feedback sampling without a server: which strategy wants an image, and the daily limits that
hold for the line across replicas (two samplers, one ledger folder)."""

from __future__ import annotations

import io
import json
import random

from PIL import Image

from tasks.core.operations_config import FeedbackConfig
from tasks.core.records import Box
from tasks.predict.folder import PredictSettings
from tasks.serving.feedback import FeedbackSampler, strategy_for

SETTINGS = PredictSettings(threshold=0.5, class_thresholds={"spot": 0.8})
BOX = Box(x1=1, y1=1, x2=10, y2=10, label="scratch")


def test_a_box_near_its_class_threshold_is_close_to_threshold_else_the_shares_decide():
    config = FeedbackConfig(close_to_threshold=0.05, no_detections_share=1.0, random_share=0.0)
    rng = random.Random(0)
    assert strategy_for([0.52], ["scratch"], 1, SETTINGS, config, rng) == "close_to_threshold"
    assert strategy_for([0.52], ["spot"], 0, SETTINGS, config, rng) == "no_detections"  # spot's is 0.8
    assert strategy_for([0.78], ["spot"], 1, SETTINGS, config, rng) == "close_to_threshold"
    assert strategy_for([0.9], ["scratch"], 1, SETTINGS, config, rng) is None
    assert strategy_for([], [], 0, SETTINGS, FeedbackConfig(no_detections_share=0.0,
                                                            random_share=0.0), rng) is None


def photo(seed: int) -> tuple[bytes, Image.Image]:
    image = Image.new("RGB", (32, 32), (seed * 7 % 255, 40, 90))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue(), image


def test_the_daily_limit_holds_across_replicas_and_no_image_comes_twice(tmp_path):
    import hashlib

    config = FeedbackConfig(close_to_threshold=0.1, close_to_threshold_daily_limit=4,
                            no_detections_daily_limit=0, random_daily_limit=0)
    inbox, ledgers = tmp_path / "inbox", tmp_path / "work" / "feedback"
    replicas = [FeedbackSampler(inbox, ledgers, name, config, seed=1) for name in ("a", "b")]
    taken = []
    for seed in range(10):
        data, image = photo(seed)
        for sampler in replicas:  # both replicas see the same image: sampled once at most
            taken.append(sampler.consider(data, hashlib.sha256(data).hexdigest(), image, "PNG",
                                          [BOX], [0.55], [BOX], [0.55], SETTINGS, 3, "m v1"))
    assert taken.count("close_to_threshold") == 4
    images = sorted(inbox.glob("served-*.png"))
    assert len(images) == 4 and all(i.with_suffix(".xml").exists() for i in images)
    sidecar = json.loads(images[0].with_suffix(".prelabel.json").read_text())
    assert sidecar["strategy"] == "close_to_threshold" and sidecar["boxes"][0]["label"] == "scratch"
    ledger_lines = [line for path in ledgers.glob("*/*.jsonl") for line in path.read_text().splitlines()]
    assert len(ledger_lines) == 4
