"""The demo's inspection station: after night 1 a `defectflow serve-model` process serves the
champion; a few production photos are sent before night 2 and again after it, so the summary
shows the server following night 2's promotion (through Prefect's champion event)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from flows.summaries import console
from tasks.demo.sample_data import generate
from tasks.nightly.server import free_port

PRODUCTION_PHOTOS = 4


@contextmanager
def model_server(config: Path, home: str, work: Path) -> Iterator[str | None]:
    """The server's URL once it answers /health, None when it did not start (said in yellow:
    the demo goes on without it)."""
    port, log = free_port(), work / "serve-model.log"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", home, "serve-model",
         str(config), "--port", str(port), "--replica", "demo"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        if not healthy(url, process):
            console.print(f"[yellow]the model server did not start (see {log}): the demo goes "
                          "on without it[/yellow]")
            url = None
        else:
            console.print(f"model server: {url} serves the champion (POST /predict, GET /health "
                          "/model /metrics); it follows the registry")
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def healthy(url: str, process: subprocess.Popen, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def production_photos(work: Path, seed: int) -> list[Path]:
    """New photos from the line (no labels): what the inspection station sends."""
    folder = work / "production"
    if not (folder / "images").is_dir():
        generate(folder, count=PRODUCTION_PHOTOS, size=128, seed=seed + 2, start=20_000,
                 troubles=False, max_defects=1)
    return sorted((folder / "images").iterdir())


def send(url: str, photos: list[Path]) -> list[dict]:
    answers = []
    for photo in photos:
        body = httpx.post(f"{url}/predict", content=photo.read_bytes(), timeout=120).json()
        answers.append({"image": photo.name, "version": body.get("model_version"),
                        "boxes": len(body["images"][0]["boxes"]) if body.get("images") else None,
                        "ms": body.get("ms")})
    return answers


def followed(url: str, version: int, seconds: float = 120) -> float | None:
    """Seconds until the server serves `version`, None when it did not within `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if httpx.get(f"{url}/model", timeout=5).json().get("version") == version:
                return round(time.monotonic() - started, 1)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


def served_line(when: str, answers: list[dict]) -> str:
    versions = sorted({a["version"] for a in answers}, key=str)
    return (f"model server, {when}: {len(answers)} production photos answered by "
            f"v{', v'.join(map(str, versions))} ({sum(a['boxes'] or 0 for a in answers)} boxes, "
            f"{max(a['ms'] or 0 for a in answers):.0f} ms at most)")
