"""What a model sees, summed so that hours and replicas add up: images, boxes per image, the
share with no box, per-class counts, a confidence histogram, brightness and contrast (mean and
spread of the images' grey levels), requests and latency. The champion's test set gives its
profile at evaluation; a model server's hours give what the line sees (serving/monitoring.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image, ImageStat

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
