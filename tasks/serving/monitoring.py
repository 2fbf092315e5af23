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
import os
import threading
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image

from tasks.core.operations_config import DriftConfig
from tasks.evaluation.profile import Figures


class Monitor:
    """Records what one replica answers; writes the hour's file at most every `flush_s`."""

    def __init__(self, folder: Path, replica: str, flush_s: float = 30):
        self.folder, self.replica, self.flush_s = folder, replica, flush_s
        self.lock = threading.Lock()
        self.hour, self.flushed, self.hour_name = self._hour(), 0.0, replica
        self.figures = self._hour_so_far()

    def _hour_so_far(self) -> Figures:
        """The hour's figures this replica wrote before it restarted: added to, not replaced.
        A file that is there but cannot be read is left as it is: this process writes its
        figures beside it (`<replica>.<pid>-<hour>.json`), and the night sums both."""
        path = self.folder / "hourly" / f"{self.hour_name}-{self.hour}.json"
        try:
            return Figures(**json.loads(path.read_text())["sums"])
        except FileNotFoundError:
            return Figures()
        except (OSError, ValueError, KeyError, TypeError):
            self.hour_name = f"{self.replica}.{os.getpid()}"
            return Figures()

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
        path = self.folder / "hourly" / f"{self.hour_name}-{self.hour}.json"
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
