"""`defectflow serve-model` as a real process on a line's registry: a round trip, every bad input
a 4xx with its reason, Prometheus metrics and the monitoring files; the alias moved under load
(8 clients, zero failures), a broken version refused while the old one serves, a rollback
followed; feedback that writes exactly its limit into the inbox."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from xml.etree import ElementTree

import httpx
import pytest
from PIL import Image

from tasks.nightly.champion_alias import move_champion
from tasks.nightly.registry import FILES_COLLECTED, _client
from tasks.nightly.server import free_port
from tasks.training.tiny import build_tiny_florence
from tests.nightly.test_gate import detector
from tests.serving.served import broken_copy, make_line, png

LABELS = ["scratch", "spot", "patch"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_florence(tmp_path_factory.mktemp("tiny"), LABELS)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny):
    """One server on a line whose champion is v1 (its tests leave the alias where it is)."""
    line = make_line(tmp_path_factory.mktemp("served"), "{poll_seconds: 1, max_bytes: 2000000}")
    move_champion(line.target, None, line.register(tiny, "night-1"))
    line.start(free_port(), module_wide=True)
    line.wait_healthy()
    yield line
    assert "Traceback" not in line.stop()


def noisy_png(size=(256, 256), seed=0) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_an_image_is_answered_with_boxes_sizes_the_version_and_a_request_id(served):
    raw = httpx.post(f"{served.url}/predict", content=png((64, 48)), timeout=60)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["model_version"] == 1 and body["model"] == "plant-florence2"
    assert body["request_id"] == raw.headers["x-request-id"]
    (image,) = body["images"]
    assert (image["width"], image["height"]) == (64, 48) and isinstance(image["boxes"], list)
    for box in image["boxes"]:
        assert box["label"] in LABELS and 0 <= box["score"] <= 1 and len(box["box"]) == 4

    several = httpx.post(f"{served.url}/predict", timeout=60, files=[
        ("images", ("a.png", png((64, 48)))), ("images", ("b.png", png((30, 20))))])
    assert several.status_code == 200, several.text
    assert [(i["name"], i["width"], i["height"]) for i in several.json()["images"]] == [
        ("a.png", 64, 48), ("b.png", 30, 20)]
    loose = httpx.post(f"{served.url}/predict?threshold=0", content=png(), timeout=60)
    assert loose.status_code == 200


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"GIF89a not really", 415, "not_an_image"),
    (b"hello", 415, "not_an_image"),
    ("truncated", 422, "image_unreadable"),
    ("bomb", 413, "image_too_large"),
    ("over max_bytes", 413, "body_too_large"),
    (b"", 400, "no_image"),
])
def test_each_bad_input_is_a_4xx_naming_its_reason(served, body, status, reason):
    if body == "truncated":
        body = noisy_png()[:-3000]
    elif body == "bomb":  # 9 megapixels in a few kB, over the config's 4 MP limit
        buffer = io.BytesIO()
        Image.new("1", (3000, 3000)).save(buffer, "PNG")
        body = buffer.getvalue()
        assert len(body) < 100_000
    elif body == "over max_bytes":
        body = b"\x89PNG" + bytes(2_100_000)
    response = httpx.post(f"{served.url}/predict", content=body, timeout=60)
    assert (response.status_code, response.json()["error"]) == (status, reason), response.text
    assert response.json()["request_id"] and "Traceback" not in response.text


def test_a_bad_threshold_is_a_400(served):
    response = httpx.post(f"{served.url}/predict?threshold=high", content=png(), timeout=60)
    assert (response.status_code, response.json()["error"]) == (400, "bad_threshold")


def test_health_model_and_metrics_say_what_is_served(served):
    httpx.post(f"{served.url}/predict", content=b"nope", timeout=60)
    httpx.post(f"{served.url}/predict", content=png(), timeout=60)
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["registry"]["reachable"] is True
    model = httpx.get(f"{served.url}/model").json()
    assert (model["name"], model["version"], model["follows"]) == ("plant-florence2", 1, "champion")
    assert model["metrics"] and model["loaded_since"]
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 'defectflow_requests_total{status="200"}' in metrics
    assert 'defectflow_errors_total{reason="not_an_image"}' in metrics
    assert "defectflow_request_seconds_bucket" in metrics and "defectflow_batch_size_bucket" in metrics
    assert "defectflow_model_version 1.0" in metrics


def test_every_answer_is_logged_and_the_hour_is_summed(served):
    body = noisy_png((80, 60), seed=3)
    request_id = httpx.post(f"{served.url}/predict", content=body, timeout=60).json()["request_id"]
    import hashlib

    monitoring = served.work / "monitoring"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [json.loads(line) for path in (monitoring / "predictions").glob("*.jsonl")
                 for line in path.read_text().splitlines()]
        if any(line["request_id"] == request_id for line in lines):
            break
        time.sleep(0.5)
    (logged,) = [line for line in lines if line["request_id"] == request_id]
    assert logged["sha256"] == hashlib.sha256(body).hexdigest() and logged["version"] == 1
    served.stop()  # the hour's file is written at least when the server stops
    (hour,) = (monitoring / "hourly").glob("*.json")
    figures = json.loads(hour.read_text())
    assert figures["images"] >= 1 and figures["requests"] >= 1
    assert figures["latency_ms"]["p95"] >= figures["latency_ms"]["p50"] > 0
    assert 0 <= figures["no_box_share"] <= 1 and figures["brightness"]["mean"] > 0
    served.start(free_port(), module_wide=True)  # the module's other tests still have theirs
    served.wait_healthy()


def test_the_champion_moved_under_load_is_served_with_no_failed_request(tmp_path, tiny):
    line = make_line(tmp_path, "{poll_seconds: 1, max_batch: 8, max_wait_ms: 20}")
    v1 = line.register(tiny, "night-1")
    move_champion(line.target, None, v1)
    line.start(free_port())
    line.wait_healthy()
    answers: list[tuple[int, int, float]] = []  # (client, version or -status, time)
    stop = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{line.url}/predict", content=png())
                    answers.append((number, response.json()["model_version"]
                                    if response.status_code == 200 else -response.status_code,
                                    time.monotonic()))
                except httpx.HTTPError:
                    answers.append((number, -1, time.monotonic()))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in clients:
        thread.start()
    time.sleep(5)
    v2 = line.register(tiny, "night-2")
    move_champion(line.target, v1, v2)
    moved = time.monotonic()
    deadline = moved + 90
    while time.monotonic() < deadline and sum(v == v2 for _, v, _ in answers) < 100:
        time.sleep(0.5)
    stop.set()
    for thread in clients:
        thread.join()
    log = line.stop()
    failed = [a for a in answers if a[1] < 0]
    assert not failed and len(answers) >= 200, (len(answers), failed[:5], log)
    assert {v for _, v, _ in answers} == {v1, v2}
    for number in range(8):  # a client that got v2 never gets v1 again
        mine = [v for n, v, _ in sorted(answers, key=lambda a: a[2]) if n == number]
        assert mine == sorted(mine)
    assert "now serving v2 (was v1)" in log


def test_a_broken_version_is_refused_the_old_one_serves_and_a_rollback_is_followed(tmp_path, tiny):
    line = make_line(tmp_path)
    v1, v2 = line.promoted_nights(tiny, 2)
    line.start(free_port())
    assert line.wait_healthy()["model_version"] == v2

    v3 = line.register(broken_copy(tiny, tmp_path / "broken"), "night-3")
    move_champion(line.target, v2, v3)  # what a night's promotion does
    model = waited_for(line, lambda m: str(v3) in m["refused"])
    assert model["version"] == v2
    assert httpx.post(f"{line.url}/predict", content=png(), timeout=60).json()["model_version"] == v2
    (alert,) = [json.loads(a) for a in (line.work / "monitoring").glob("alerts-*.jsonl")
                for a in a.read_text().splitlines()]
    assert f"v{v3} refused" in alert["title"] and f"still serving v{v2}" in alert["body"]

    rolled = line.defectflow("rollback", str(line.config))  # back to `previous`: v2
    assert rolled.returncode == 0 and f"v{v3} -> v{v2}" in rolled.stdout, rolled.stdout + rolled.stderr
    again = line.defectflow("rollback", str(line.config), "--to", str(v1))
    assert again.returncode == 0, again.stdout + again.stderr
    assert waited_for(line, lambda m: m["version"] == v1)["version"] == v1
    # the copies it keeps: the version it serves and the one before (v3's went with the swap)
    copies = sorted(p.name.split("-")[0] for p in (line.work / "serving").glob("*/models/v*"))
    assert copies == [f"v{v1}", f"v{v2}"]
    client = _client(line.target.tracking_uri)
    record = json.loads(client.get_model_version(line.target.model_name, str(v1)).tags["rollback"])
    assert (record["from_version"], record["to_version"]) == (v2, v1)
    assert "promotion" not in client.get_model_version(line.target.model_name, str(v1)).tags

    client.set_model_version_tag(line.target.model_name, str(v2), FILES_COLLECTED, "{}")
    refused = line.defectflow("rollback", str(line.config), "--to", str(v2))
    assert refused.returncode == 2 and "collected" in refused.stdout, refused.stdout
    assert "Traceback" not in line.stop()


def waited_for(line, check, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        model = httpx.get(f"{line.url}/model", timeout=10).json()
        if check(model):
            return model
        time.sleep(0.5)
    raise AssertionError(f"not in {seconds} s: {model}\n{line.log.read_text()}")


def test_feedback_writes_exactly_its_limit_into_the_inbox_and_never_an_image_twice(tmp_path, tiny):
    line = make_line(tmp_path, "{poll_seconds: 1, feedback: {random_share: 1.0, "
                     "random_daily_limit: 3, close_to_threshold_daily_limit: 0, "
                     "no_detections_daily_limit: 0}}")
    move_champion(line.target, None, line.register(tiny, "night-1"))
    line.start(free_port())
    line.wait_healthy()
    first = noisy_png((64, 64), seed=1)
    for _ in range(3):  # the same image again and again is sampled once
        assert httpx.post(f"{line.url}/predict", content=first, timeout=60).status_code == 200
    for seed in range(2, 8):
        assert httpx.post(f"{line.url}/predict", content=noisy_png((64, 64), seed=seed),
                          timeout=60).status_code == 200
    assert "Traceback" not in line.stop()  # the sampling is done by then
    images = sorted(line.inbox.glob("served-*.png"))
    assert len(images) == 3
    for image in images:
        xml = ElementTree.parse(image.with_suffix(".xml")).getroot()
        assert xml.get("verified") == "no" and xml.findtext("filename") == image.name
        sidecar = json.loads(image.with_suffix(".prelabel.json").read_text())
        assert sidecar["strategy"] == "random" and sidecar["model_version"] == "plant-florence2 v1"
    assert len({image.read_bytes() for image in images}) == 3
    assert not list(line.inbox.glob(".*"))  # nothing half-written left


def test_a_promotion_and_a_rollback_are_followed_at_once_through_prefects_event(
        tmp_path, tiny, prefect_server):
    from prefect.settings import PREFECT_API_URL

    from tasks.core.config import RegistryConfig
    from tasks.nightly.promotion import Candidate, promote_step

    line = make_line(tmp_path, "{poll_seconds: 600}")  # the poll would take ten minutes
    v1 = line.register(tiny, "night-1")
    move_champion(line.target, None, v1)
    line.start(free_port(), prefect=PREFECT_API_URL.value())
    line.wait_healthy()
    v2 = line.register(tiny, "night-2")
    decision = promote_step(line.target, RegistryConfig(), "map50",
                            Candidate(version=v2, metrics=detector(0.9)),
                            Candidate(version=v1, metrics=detector(0.5)), line.work)
    assert decision["promoted"], decision
    assert waited_for(line, lambda m: m["version"] == v2, 30)["version"] == v2
    rolled = line.defectflow("rollback", str(line.config), prefect=PREFECT_API_URL.value())
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert waited_for(line, lambda m: m["version"] == v1, 30)["version"] == v1
    assert "Traceback" not in line.stop()


def test_a_promotion_does_not_move_the_champion_a_rollback_moved_meanwhile(tmp_path, tiny):
    from tasks.core.config import RegistryConfig
    from tasks.nightly.champion_alias import rollback
    from tasks.nightly.promotion import Candidate, promote_step
    from tasks.nightly.registry import champion_version

    line = make_line(tmp_path)
    v1, v2 = line.promoted_nights(tiny, 2)
    v3 = line.register(tiny, "night-3")  # tonight's challenger, compared with v2...
    rollback(line.target, line.work)  # ...while a person rolls back to v1
    decision = promote_step(line.target, RegistryConfig(), "map50",
                            Candidate(version=v3, metrics=detector(0.9)),
                            Candidate(version=v2, metrics=detector(0.5)), line.work)
    assert not decision["promoted"] and "rollback" in decision["reason"]
    assert champion_version(line.target.tracking_uri, line.target.model_name)["version"] == v1


def test_started_while_the_registry_cannot_answer_it_serves_its_verified_local_copy(tmp_path, tiny):
    import sqlite3

    line = make_line(tmp_path)
    move_champion(line.target, None, line.register(tiny, "night-1"))
    line.start(free_port())
    line.wait_healthy()
    assert "Traceback" not in line.stop()

    locked, release = threading.Event(), threading.Event()

    def hold_the_registry() -> None:  # another process's write lock: "database is locked"
        with sqlite3.connect(line.home / "mlflow" / "mlflow.db", timeout=60) as connection:
            connection.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(120)
            connection.rollback()

    holder = threading.Thread(target=hold_the_registry)
    holder.start()
    try:
        assert locked.wait(30)
        line.start(free_port(), "--replica", "another-machine")  # the line's copy, verified
        health = line.wait_healthy(100)
        assert health["model_version"] == 1 and health["registry"]["reachable"] is False
        assert httpx.get(f"{line.url}/model").json()["source"].startswith("local copy")
        assert httpx.post(f"{line.url}/predict", content=png(), timeout=60).status_code == 200
    finally:
        release.set()
        holder.join()
    answered = waited_for(line, lambda m: m["registry"]["reachable"] is True, 120)
    assert answered["version"] == 1
    assert "Traceback" not in line.stop()


def test_a_pinned_version_is_served_whatever_the_champion(tmp_path, tiny):
    line = make_line(tmp_path)
    v1, _ = line.promoted_nights(tiny, 2)
    line.start(free_port(), "--version", str(v1))
    assert line.wait_healthy()["model_version"] == v1
    model = httpx.get(f"{line.url}/model").json()
    assert (model["version"], model["follows"], model["source"]) == (v1, f"v{v1} (pinned)", "pinned")
    time.sleep(3)  # polls go by: still the pinned one
    assert httpx.post(f"{line.url}/predict", content=png(), timeout=60).json()["model_version"] == v1
    assert "Traceback" not in line.stop()
