"""Steps after the night's decision (the Hub push of a new champion, the inbox pre-labels) can
fail without failing or undoing the night: logged, alerted, done again the next night."""

import json

import pytest

from flows.retrain import retrain
from tasks.core.config import load_config
from tasks.demo.sample_data import generate
from tasks.ingest import ingest
from tasks.nightly.followups import PENDING_FILE, push_champion_task
from tasks.nightly.promotion import last_success
from tasks.nightly.registry import champion_version, embedded_tracking_uri
from tests.flows.test_retrain import nightly_config
from tests.support import artifacts_of

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


class Hub:
    """The Hub API, stopped at the network: refuses (a bad token) or records each commit."""

    def __init__(self, refuse: bool):
        self.refuse, self.commits = refuse, []

    def __call__(self):  # used as `HfApi()`
        return self

    def create_repo(self, repo_id, **kwargs):
        if self.refuse:
            raise PermissionError("403 Forbidden: the token cannot write to factory/detector")

    def create_commit(self, **kwargs):
        self.commits.append(sorted(op.path_in_repo for op in kwargs["operations"]))
        return type("Commit", (), {"oid": "c0ffee"})()


def test_a_failed_push_or_prelabel_after_promotion_leaves_the_night_completed_and_is_redone(
        tmp_path, monkeypatch):
    source, inbox = tmp_path / "source", tmp_path / "inbox"
    generate(source, count=24, size=64, seed=9)
    generate(inbox, count=2, size=64, seed=10, troubles=False)
    for xml in (inbox / "annotations").glob("*.xml"):
        xml.unlink()
    config = tmp_path / "line.yaml"
    config.write_text(nightly_config(source)
                      + f"prelabel: {{inbox: {inbox}/images, threshold: 0}}\n"
                      + "registry: {hub_repo: factory/detector}\n"
                      + "notify: {url: 'json://localhost/alerts'}\n")
    home, work = tmp_path / "home", tmp_path / "work"
    alerts: list[str] = []
    monkeypatch.setattr("tasks.nightly.followups.send_alert",
                        lambda url, title, body: alerts.append(title) or True)
    monkeypatch.setattr("flows.retrain.push_champion_task",  # no retry delays in a test
                        push_champion_task.with_options(retries=0))
    monkeypatch.setattr("huggingface_hub.HfApi", Hub(refuse=True))

    def cannot_load(model_dir):
        raise OSError(f"{model_dir}: input/output error")

    monkeypatch.setattr("tasks.training.models.load_finetuned_detector", cannot_load)

    # Night 1: promoted and recorded; then both steps after it fail. The night stays Completed.
    first = retrain(str(config), str(work), str(home), return_state=True)
    assert first.is_completed(), first.message
    summary = first.result()
    assert summary["decision"]["promoted"]
    uri = embedded_tracking_uri(home / "mlflow")
    assert champion_version(uri, "nightly-florence2")["version"] == 1
    assert last_success(work)["model_version"] == 1  # the baseline advanced
    assert summary["followups"]["push-champion"].startswith("failed: ")
    assert "403 Forbidden" in summary["followups"]["push-champion"]
    assert "input/output error" in summary["followups"]["prelabel"]
    assert summary["prelabels"] is None
    assert sorted(json.loads((work / PENDING_FILE).read_text())) == ["prelabel", "push-champion"]
    assert sorted(alerts) == ["defectflow: prelabel failed after the night completed",
                              "defectflow: push-champion failed after the night completed"]

    # Night 2: nothing new, the Hub and the disk are back: both are done with the champion.
    monkeypatch.undo()
    hub = Hub(refuse=False)
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    second = retrain(str(config), str(work), str(home), return_state=True)
    assert second.is_completed() and "no new images" in second.message
    assert len(hub.commits) == 1 and "README.md" in hub.commits[0]
    assert champion_version(uri, "nightly-florence2")["tags"]["model_hub_revision"] == "c0ffee"
    assert len(list((inbox / "images").glob("*.xml"))) == 2  # the pre-labels, written
    # And the labelling queue of those 2 unverified images, its gallery on the night's run.
    assert len((work / "queue" / "queue.csv").read_text().splitlines()) == 1 + 2
    artifacts = artifacts_of(second.state_details.flow_run_id)
    assert artifacts["labelling-queue"].type == "image"
    assert len(artifacts["labelling-queue-top"].data) > 0
    assert json.loads((work / PENDING_FILE).read_text()) == {}
    # Night 3: nothing left to do.
    third = retrain(str(config), str(work), str(home), return_state=True)
    assert third.is_completed() and len(hub.commits) == 1
    # A night that found nothing new holds no listing of its source afterwards.
    assert load_config(config).source.model_dump_json() not in ingest._run_listing
