"""What a model server sees, kept where a person (and the night) can read it:

    <work>/monitoring/predictions/<replica>-<day>.jsonl   every image answered: its hash, the
                                                          version, boxes and scores (a file a day)
    <work>/monitoring/hourly/<replica>-<day>T<hour>.json   the hour's figures: requests, latency
                                                          p50/p95, share of images with no box,
                                                          boxes per image, per-class counts, a
                                                          confidence histogram, brightness and
                                                          contrast (mean, spread)
    <work>/monitoring/alerts-<replica>.jsonl              what the server alerted about

The same figures of the champion's test set are its profile; `drift` compares 24 h of them with it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, ImageStat

from tasks.core.operations_config import DriftConfig

HISTOGRAM_BINS = 10


def brightness_contrast(image: Image.Image) -> tuple[float, float]:
    """The mean and standard deviation of the image's grey levels (0-255)."""
    stat = ImageStat.Stat(image.convert("L"))
    return stat.mean[0], stat.stddev[0]


@dataclass
class Figures:
    """Sums that add across hours and replicas; `summary()` turns them into the figures."""

    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    images: int = 0
    no_box: int = 0
    boxes: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    confidence: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    brightness: list[float] = field(default_factory=lambda: [0.0, 0.0])  # sum, sum of squares
    contrast: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def add_image(self, image: Image.Image, labels: list[str], scores: list[float]) -> None:
        bright, spread = brightness_contrast(image)
        self.images += 1
        self.no_box += not labels
        self.boxes += len(labels)
        counts = Counter(self.per_class)
        counts.update(labels)
        self.per_class = dict(counts)
        for score in scores:
            self.confidence[min(int(score * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        self.brightness = [self.brightness[0] + bright, self.brightness[1] + bright ** 2]
        self.contrast = [self.contrast[0] + spread, self.contrast[1] + spread ** 2]

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.latencies_ms += other.latencies_ms
        self.images += other.images
        self.no_box += other.no_box
        self.boxes += other.boxes
        self.per_class = dict(Counter(self.per_class) + Counter(other.per_class))
        self.confidence = [a + b for a, b in zip(self.confidence, other.confidence, strict=True)]
        self.brightness = [a + b for a, b in zip(self.brightness, other.brightness, strict=True)]
        self.contrast = [a + b for a, b in zip(self.contrast, other.contrast, strict=True)]

    def summary(self) -> dict:
        def mean_spread(sums: list[float]) -> dict:
            if not self.images:
                return {"mean": None, "std": None}
            mean = sums[0] / self.images
            return {"mean": round(mean, 2),
                    "std": round(math.sqrt(max(sums[1] / self.images - mean ** 2, 0)), 2)}

        latencies = sorted(self.latencies_ms)

        def percentile(share: float) -> float | None:
            return round(latencies[min(int(share * len(latencies)), len(latencies) - 1)], 1) \
                if latencies else None

        return {"requests": self.requests, "images": self.images,
                "latency_ms": {"p50": percentile(0.5), "p95": percentile(0.95)},
                "no_box_share": round(self.no_box / self.images, 4) if self.images else None,
                "boxes_per_image": round(self.boxes / self.images, 3) if self.images else None,
                "per_class": self.per_class, "confidence_histogram": self.confidence,
                "brightness": mean_spread(self.brightness), "contrast": mean_spread(self.contrast)}


class Monitor:
    """Records what one replica answers; writes the hour's file at most every `flush_s`."""

    def __init__(self, folder: Path, replica: str, flush_s: float = 30):
        self.folder, self.replica, self.flush_s = folder, replica, flush_s
        self.lock = threading.Lock()
        self.hour, self.figures, self.flushed = self._hour(), Figures(), 0.0

    @staticmethod
    def _hour() -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H")

    def image(self, request_id: str, sha256: str, version: int | None, image: Image.Image,
              labels: list[str], boxes: list[list[float]], scores: list[float]) -> None:
        line = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "request_id": request_id, "sha256": sha256, "version": version,
                "boxes": [{"label": label, "box": box, "score": round(score, 4)}
                          for label, box, score in zip(labels, boxes, scores, strict=True)]}
        day = self.folder / "predictions" / f"{self.replica}-{line['at'][:10]}.jsonl"
        with self.lock:
            self._roll()
            self.figures.add_image(image, labels, scores)
            day.parent.mkdir(parents=True, exist_ok=True)
            with day.open("a") as log:
                log.write(json.dumps(line) + "\n")
        self.flush()

    def request(self, ms: float) -> None:
        with self.lock:
            self._roll()
            self.figures.requests += 1
            self.figures.latencies_ms.append(ms)

    def _roll(self) -> None:
        if (hour := self._hour()) != self.hour:
            self._write()
            self.hour, self.figures = hour, Figures()

    def flush(self, force: bool = False) -> None:
        with self.lock:
            if force or time.monotonic() - self.flushed >= self.flush_s:
                self._write()

    def _write(self) -> None:
        path = self.folder / "hourly" / f"{self.replica}-{self.hour}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        partial.write_text(json.dumps({"hour": self.hour, "replica": self.replica,
                                       **self.figures.summary(), "sums": asdict(self.figures)}))
        partial.replace(path)
        self.flushed = time.monotonic()

    def alert(self, title: str, body: str) -> None:
        path = self.folder / f"alerts-{self.replica}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock, path.open("a") as log:
            log.write(json.dumps({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  "title": title, "body": body}) + "\n")


def last_day(folder: Path, now: datetime | None = None) -> Figures:
    """Every replica's figures of the 24 hours before `now`."""
    now = now or datetime.now(timezone.utc)
    hours = {(now - timedelta(hours=h)).strftime("%Y-%m-%dT%H") for h in range(24)}
    total = Figures()
    for path in sorted((folder / "hourly").glob("*.json")):
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file being replaced: the next night reads it
        if found.get("hour") in hours:
            total.add(Figures(**found["sums"]))
    return total


def drift(recent: dict, reference: dict, config: DriftConfig) -> list[str]:
    """What moved past `config` between the reference profile and the recent figures."""
    if not recent.get("images") or recent["images"] < config.min_images:
        return []
    found = []
    base, now = reference.get("no_box_share"), recent.get("no_box_share")
    if base is not None and now is not None and now > max(base, 0.01) * config.no_box_share_ratio:
        found.append(f"images with no box: {now:.0%} (test set {base:.0%})")
    for name in ("brightness", "contrast"):
        ref, seen = reference.get(name) or {}, recent.get(name) or {}
        if ref.get("mean") is None or seen.get("mean") is None:
            continue
        sigma = max(ref.get("std") or 0, 1.0)
        if abs(seen["mean"] - ref["mean"]) > config.brightness_sigmas * sigma:
            found.append(f"{name}: mean {seen['mean']:.1f} (test set {ref['mean']:.1f} "
                         f"+- {sigma:.1f})")
    return found
