"""Alerts through Apprise, received by a real HTTP server on 127.0.0.1: a failed nightly run and
a promotion each send one message; a run that promotes nothing sends none."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from tasks.demo.sample_data import generate
from tasks.nightly.alerts import notify_on_completion, send_alert
from tests.support import demo_config


@pytest.fixture
def receiver():
    """A local webhook: every JSON body POSTed to it, in order."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"json://127.0.0.1:{server.server_port}/defectflow", received
    server.shutdown()


def config_file(tmp_path, url: str, extra: str = "") -> str:
    source = tmp_path / "source"
    generate(source, count=12, size=64, seed=3, troubles=False)
    path = tmp_path / "c.yaml"
    path.write_text(demo_config(source) + f"notify: {{url: '{url}'}}\n" + extra, encoding="utf-8")
    return str(path)


def test_send_alert_delivers_title_and_body(receiver):
    url, received = receiver
    assert send_alert(url, "a title", "a body")
    assert [(m["title"], m["message"]) for m in received] == [("a title", "a body")]
    assert not send_alert("no-such-scheme://x", "t", "b")  # an unusable URL: False, no raise


def test_a_promotion_sends_one_message_and_a_kept_champion_none(tmp_path, receiver):
    url, received = receiver
    flow_run = SimpleNamespace(parameters={"config_path": config_file(tmp_path, url)},
                               name="nightly-1")

    def finished_with(decision):
        return SimpleNamespace(result=lambda raise_on_failure=False: {"decision": decision})

    notify_on_completion(SimpleNamespace(name="retrain"), flow_run, finished_with(
        {"promoted": True, "challenger_version": "3", "reason": "0.71 > 0.65: promoted"}))
    notify_on_completion(SimpleNamespace(name="retrain"), flow_run, finished_with(
        {"promoted": False, "challenger_version": "4", "reason": "champion kept"}))
    assert len(received) == 1
    assert received[0]["title"] == "defectflow: new champion v3"
    assert "0.71 > 0.65: promoted" in received[0]["message"]


@pytest.mark.usefixtures("prefect_server")
def test_a_nightly_run_that_fails_sends_a_failure_message(tmp_path, receiver):
    from flows.retrain import retrain

    url, received = receiver
    config = config_file(tmp_path, url, "model: {checkpoint: /nowhere/florence-2}\n")
    state = retrain(config, str(tmp_path / "work"), str(tmp_path / "home"), return_state=True)
    assert state.is_failed()
    [message] = received
    assert message["title"].startswith("defectflow: retrain run ") and "failed" in message["title"]
    assert "/nowhere/florence-2" in message["message"] and "Retry" in message["message"]
