"""What the line's servers saw against the champion's test set: darkened images sent for a while
raise the night's drift alert, the usual ones do not; the `serving-monitor` artifact says so."""

from __future__ import annotations

import io
import json
import random

import httpx
from PIL import Image

from tasks.core.config import load_config
from tasks.core.operations_config import DriftConfig
from tasks.evaluation.profile import Figures
from tasks.nightly.champion_alias import move_champion
from tasks.nightly.server import free_port
from tasks.serving.monitoring import drift
from tests.serving.served import make_line
from tests.support import artifacts_of


def monitor_artifact(flow_run_id) -> str:
    """The night's `serving-monitor` artifact, once the server lists it."""
    import time

    deadline = time.monotonic() + 30
    while "serving-monitor" not in (found := artifacts_of(flow_run_id)):
        assert time.monotonic() < deadline, f"no serving-monitor artifact: {sorted(found)}"
        time.sleep(1)
    return found["serving-monitor"].data


def photo(seed: int, level: int) -> Image.Image:
    """A textured grey picture around `level` (the line's camera, or the camera gone dark)."""
    rng = random.Random(seed)
    return Image.frombytes("L", (48, 48), bytes(max(0, min(255, level + rng.randint(-25, 25)))
                                                for _ in range(48 * 48))).convert("RGB")


def encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def profile_of(images: list[Image.Image]) -> dict:
    figures = Figures()
    for image in images:
        figures.add_image(image, [], [])
    return figures.summary()


def test_drift_is_a_shift_past_the_test_sets_spread_not_any_change():
    test_set = profile_of([photo(seed, 120 + seed % 20) for seed in range(40)])
    config = DriftConfig(min_images=20)
    usual = profile_of([photo(seed, 120 + seed % 20) for seed in range(100, 130)])
    assert drift(usual, test_set, config) == []
    dark = profile_of([photo(seed, 25) for seed in range(100, 130)])
    assert any(found.startswith("brightness") for found in drift(dark, test_set, config))
    assert drift(profile_of([photo(1, 25)] * 5), test_set, config) == []  # too few to say


def test_darkened_images_sent_for_a_while_raise_the_nights_drift_alert(tmp_path, tiny_florence,
                                                                       prefect_server):
    from prefect import flow

    from tasks.serving.night_monitor import serving_monitor_task

    line = make_line(tmp_path, "{poll_seconds: 1, feedback: null, drift: {min_images: 20}}")
    test_set = [photo(seed, 120 + seed % 20) for seed in range(40)]
    reference = {k: v for k, v in profile_of(test_set).items() if k not in ("requests", "latency_ms")}
    move_champion(line.target, None, line.register(tiny_florence, "night-1",
                                                   {"serving_profile": reference}))
    config = load_config(line.config)

    @flow
    def a_night() -> dict:
        return serving_monitor_task(work_dir=str(line.work), registry=line.target, config=config)

    def served(images: list[Image.Image]) -> None:
        line.start(free_port())
        line.wait_healthy()
        for image in images:
            assert httpx.post(f"{line.url}/predict", content=encoded(image),
                              timeout=60).status_code == 200
        assert "Traceback" not in line.stop()  # its hour's figures are written when it stops

    served([photo(seed, 120 + seed % 20) for seed in range(200, 230)])
    state = a_night(return_state=True)
    found = state.result()
    assert found["recent"]["images"] == 30 and found["drift"] == []
    artifact = monitor_artifact(state.state_details.flow_run_id)
    assert "**Drift:** none" in artifact and "| images | 30 |" in artifact

    served([photo(seed, 25) for seed in range(300, 340)])  # the lamp failed
    state = a_night(return_state=True)
    found = state.result()
    assert found["recent"]["images"] == 70 and found["drift"], found
    assert "brightness" in monitor_artifact(state.state_details.flow_run_id)
    (alert,) = [json.loads(a) for a in (line.work / "monitoring" / "alerts-night.jsonl")
                .read_text().splitlines()]
    assert "drifted" in alert["title"] and "brightness" in alert["body"]
