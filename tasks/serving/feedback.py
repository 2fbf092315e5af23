"""Served images back to labelling, in the spirit of Roboflow Inference's active learning: an
image whose box is within epsilon of its class threshold (`close_to_threshold`), a share of the
images with no box (`no_detections`), a share of all (`random`); each strategy with a daily limit.

A sampled image lands in the line's `prelabel.inbox` as `served-<hash>.<ext>` with its pre-label
XML (`verified="no"`) and a sidecar naming the model version and the strategy, so the next
night's queue ranks it and a person's verification makes it a label (`adopt: verified`).

Replicas: each writes its own ledger, `<work>/feedback/<day>/<replica>.jsonl`, but takes what it
samples under one file lock in `<work>/feedback/` and counts every replica's ledger of the day
under it, so the daily limits hold for the line, not per replica; an image already in any ledger
(its content hash) or in the inbox is never sampled again.
"""

from __future__ import annotations

import json
import os
import random
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from tasks.core.operations_config import FeedbackConfig
from tasks.ingest.labelimg_writer import labelimg_xml, save_xml
from tasks.predict.folder import PredictSettings
from tasks.predict.prelabel import write_sidecar

STRATEGIES = ("close_to_threshold", "no_detections", "random")
SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def strategy_for(scores: list[float], labels: list[str], kept: int, settings: PredictSettings,
                 config: FeedbackConfig, rng: random.Random) -> str | None:
    """The first strategy that wants the image (every box the model gave, kept or not)."""
    for label, score in zip(labels, scores, strict=True):
        threshold = settings.class_thresholds.get(label, settings.threshold)
        if abs(score - threshold) <= config.close_to_threshold:
            return "close_to_threshold"
    if kept == 0 and rng.random() < config.no_detections_share:
        return "no_detections"
    if rng.random() < config.random_share:
        return "random"
    return None


class FeedbackSampler:
    def __init__(self, inbox: Path, ledgers: Path, replica: str, config: FeedbackConfig,
                 seed: int | None = None):
        self.inbox, self.ledgers, self.replica, self.config = inbox, ledgers, replica, config
        self.rng = random.Random(seed)

    def limit(self, strategy: str) -> int:
        return getattr(self.config, f"{strategy}_daily_limit")

    def _ledger_lines(self) -> list[dict]:
        lines = []
        for path in self.ledgers.glob("*/*.jsonl"):
            lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return lines

    def consider(self, data: bytes, sha256: str, image: Image.Image, image_format: str,
                 prediction_boxes: list, prediction_scores: list[float], kept_boxes: list,
                 kept_scores: list[float], settings: PredictSettings, depth: int,
                 model_version: str) -> str | None:
        """Sample the image into the inbox when a strategy wants it and its limit allows; the
        strategy, or None."""
        from filelock import FileLock

        strategy = strategy_for(prediction_scores, [b.label for b in prediction_boxes],
                                len(kept_boxes), settings, self.config, self.rng)
        if strategy is None or self.limit(strategy) == 0:
            return None
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        self.ledgers.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.ledgers / ".lock"), timeout=30):
            ledger = self._ledger_lines()
            if any(line["sha256"] == sha256 for line in ledger):
                return None
            taken = sum(1 for line in ledger if line["day"] == day and line["strategy"] == strategy)
            if taken >= self.limit(strategy):
                return None
            path = self.inbox / f"served-{sha256[:16]}{SUFFIX.get(image_format, '.png')}"
            if path.exists():
                return None
            self._write(path, data, image, depth, kept_boxes, kept_scores, settings,
                        model_version, strategy)
            own = self.ledgers / day / f"{self.replica}.jsonl"
            own.parent.mkdir(parents=True, exist_ok=True)
            with own.open("a") as log:
                log.write(json.dumps({"day": day, "sha256": sha256, "strategy": strategy,
                                      "image": path.name, "model_version": model_version}) + "\n")
        return strategy

    @staticmethod
    def _write(path: Path, data: bytes, image: Image.Image, depth: int, boxes: list,
               scores: list[float], settings: PredictSettings, model_version: str,
               strategy: str) -> None:
        """XML and sidecar first, the image last and whole: a night listing the inbox never
        sees the image without its pre-label, nor half an image."""
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = image.size
        save_xml(path.with_suffix(".xml"), labelimg_xml(path.resolve(), width, height, depth,
                                                        boxes, verified=False), overwrite=False)
        write_sidecar(path, model_version, settings, boxes, scores, {"strategy": strategy})
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(path)
