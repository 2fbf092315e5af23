"""A line with registered versions of the tiny Florence-2 and its `defectflow serve-model`
process, for the serving tests."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from tasks.nightly.registry import RegistryTarget, embedded_tracking_uri, register_version
from tests.support import demo_config

BIN = Path(sys.executable).parent
STARTED: list[subprocess.Popen] = []  # every server a test started: conftest stops what is left


@dataclass
class ServedLine:
    root: Path
    home: Path
    config: Path
    target: RegistryTarget
    inbox: Path
    url: str = ""
    process: subprocess.Popen | None = None

    @property
    def work(self) -> Path:
        return self.home / "lines" / "plant"

    def register(self, model_dir: Path, night: str, metrics: dict | None = None) -> int:
        return register_version(self.target.tracking_uri, self.home / "mlflow" / "artifacts",
                                self.target.model_name, model_dir,
                                {"coco": {"map50": 0.5}, **(metrics or {})},
                                {"dataset_fingerprint": night})["version"]

    def promoted_nights(self, model_dir: Path, nights: int) -> list[int]:
        """`nights` versions of the model, each made champion in turn (`previous` follows)."""
        from tasks.nightly.champion_alias import move_champion

        versions: list[int] = []
        for night in range(1, nights + 1):
            versions.append(self.register(model_dir, f"night-{night}"))
            move_champion(self.target, versions[-2] if len(versions) > 1 else None, versions[-1])
        return versions

    def defectflow(self, *args: str, prefect: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "defectflow"), "--home", str(self.home), *args],
                              capture_output=True, text=True, timeout=300, env=quiet_env(prefect))

    def start(self, port: int, *args: str, prefect: str | None = None,
              module_wide: bool = False) -> None:
        """`serve-model` on `port`; stopped after the test (after the module: `module_wide`)."""
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.root / f"serve-model-{port}.log"
        self.process = subprocess.Popen(
            [str(BIN / "defectflow"), "--home", str(self.home), "serve-model", str(self.config),
             "--port", str(port), *args], stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env=quiet_env(prefect), start_new_session=True)
        if not module_wide:
            STARTED.append(self.process)

    def wait_healthy(self, seconds: float = 120) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                response = httpx.get(f"{self.url}/health", timeout=5)
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"no healthy server in {seconds} s:\n{self.log.read_text()}")

    def stop(self) -> str:
        if self.process and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.log.read_text() if self.process else ""


def quiet_env(prefect: str | None = None) -> dict:
    """The tests' environment; without `prefect` no Prefect server: the server follows by
    polling."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if prefect:
        env["PREFECT_API_URL"] = prefect
    return env


def make_line(root: Path, serving: str = "{poll_seconds: 1}") -> ServedLine:
    source, inbox = root / "source", root / "inbox"
    for folder in (source / "images", source / "annotations", inbox):
        folder.mkdir(parents=True)
    config = root / "plant.yaml"
    config.write_text(demo_config(source, "plant") + f"prelabel: {{inbox: {inbox}}}\n"
                      f"images: {{max_pixels: 4000000}}\nserving: {serving}\n"
                      "notify: {'on': [serving]}\n")
    home = root / "home"
    target = RegistryTarget(tracking_uri=embedded_tracking_uri(home / "mlflow"),
                            model_name="plant-florence2")
    return ServedLine(root, home, config, target, inbox)


def broken_copy(model_dir: Path, to: Path) -> Path:
    """The model's files with its weights cut short: it registers, downloads and fails to load."""
    shutil.copytree(model_dir, to)
    weights = next(to.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:4096])
    return to


def png(size=(64, 48), colour=(120, 120, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()
