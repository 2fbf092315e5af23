"""The nightly retrain flow: lineage in the registry, nothing-new, rerun-only-the-failed-step,
promotion only on improvement, one run per work dir, Dask prep."""

import json
from pathlib import Path

import pytest

from flows.prepare import prepare
from flows.retrain import retrain
from tasks.core.config import RegistryConfig, load_config
from tasks.core.run_history import task_run_states
from tasks.demo.sample_data import generate
from tasks.nightly.champion_copy import copy_key
from tasks.nightly.gate import decide
from tasks.nightly.promotion import Candidate, promote_step, work_dir_lock
from tasks.nightly.registry import (
    RegistryTarget,
    champion_version,
    embedded_tracking_uri,
    register_version,
)
from tasks.nightly.runners import prep_task_runner
from tasks.training.trainer import FAIL_ENV
from tests.support import artifacts_of, logs_of, registry_and_model, tiny_nightly_config

pytestmark = pytest.mark.usefixtures("prefect_server")


def nightly_config(source: Path) -> str:
    return tiny_nightly_config("nightly", source, max_steps=12, eval_steps=4)


def states_of(state) -> dict[str, str]:
    return dict(task_run_states(state.state_details.flow_run_id))


def by_prefix(states: dict[str, str], prefix: str) -> list[str]:
    return [s for name, s in states.items() if name.startswith(prefix)]


def run_dir_of(result: dict) -> Path:
    return Path(result["train"]["model_dir"]).parent


def scored(eval_dir: Path) -> dict:
    """The ground truth an evaluation scored (its gt.json: image names, sizes, boxes)."""
    return json.loads((eval_dir / "gt.json").read_text())


def image_names(ground_truth: dict) -> set[str]:
    return {image["file_name"] for image in ground_truth["images"]}


@pytest.mark.slow
def test_nightly_retrain_end_to_end(tmp_path, monkeypatch):
    source = tmp_path / "source"
    generate(source, count=30, size=64, seed=9)
    inbox = tmp_path / "inbox"  # new photos nobody has labelled yet, and one a person has
    generate(inbox, count=3, size=64, seed=10, troubles=False)
    for xml in sorted((inbox / "annotations").glob("*.xml"))[1:]:
        xml.unlink()
    human = sorted((inbox / "annotations").glob("*.xml"))[0]
    human_xml = human.read_bytes()
    human.rename(inbox / "images" / human.name)
    config = tmp_path / "nightly.yaml"
    config.write_text(nightly_config(source) + f"prelabel: {{inbox: {inbox}/images, threshold: 0}}\n")
    home, work = tmp_path / "home", tmp_path / "work"

    # Night 1: everything runs; version 1 carries its lineage and becomes champion; the
    # champion pre-labels the two inbox images without an XML and leaves the person's alone.
    first = retrain(str(config), str(work), str(home), return_state=True)
    assert first.is_completed(), first.message
    summary = first.result()
    prelabels = summary["prelabels"]
    assert (prelabels["images"], prelabels["already_labelled"], prelabels["written"]) == (3, 1, 2)
    assert (inbox / "images" / human.name).read_bytes() == human_xml
    assert len(list((inbox / "images").glob("*.xml"))) == 3
    tracking_uri = embedded_tracking_uri(home / "mlflow")
    champion = champion_version(tracking_uri, "nightly-florence2")
    assert champion["version"] == 1 == summary["version"]["version"]
    tags = champion["tags"]
    assert tags["dataset_fingerprint"] == summary["report"]["fingerprint"]
    assert tags["prefect_flow_run_id"] == str(first.state_details.flow_run_id)
    for key in ("config_hash", "code_version", "metric.map", "metric.map50", "hub_revision"):
        assert key in tags
    assert summary["decision"]["promoted"] and summary["decision"]["champion_version"] is None
    # The run log tells the story: what prepare found and did, the test numbers, the decision.
    logs = logs_of(first.state_details.flow_run_id)
    for start, holds in (("images: found", "quarantined"), ("boxes: found", "dropped"),
                         ("work this run:", "images_decoded"), ("targets: longest", "budget"),
                         ("challenger: map50", "truncated outputs"), ("promotion:", "champion"),
                         ("pre-labelled 2 inbox images", "1 already had an XML")):
        assert any(line.startswith(start) and holds in line for line in logs), (start, logs)
    # MLflow: the config as parameters, the evaluation's pictures next to the model.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = summary["version"]["run_id"]
    params = client.get_run(run_id).data.params
    assert (params["train.max_steps"], params["train.lr"], params["model.lora"]) == (
        "12", "0.001", "None")
    pictures = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/predictions.png",
            "evaluation/metrics.json"} <= pictures

    night1_test = image_names(scored(Path(summary["train"]["model_dir"]).parent / "eval"))
    assert len(night1_test) == summary["metrics"]["n_images"] > 0
    # what the model servers' images are compared with: the version's test-set profile
    profile = json.loads(client.get_model_version(summary["version"]["model_name"], str(
        summary["version"]["version"])).tags["serving_profile"])
    assert profile["images"] == len(night1_test) and profile["brightness"]["mean"] > 0

    # Night 2, nothing new: completes quickly, says so, trains nothing.
    second = retrain(str(config), str(work), str(home), return_state=True)
    assert second.is_completed() and "no new images" in second.message
    assert not by_prefix(states_of(second), "train")

    # Night 3: new images, and training dies after each checkpoint (injected): the task's own
    # retry resumes from step 4 and dies again after step 8, so the run fails.
    old_items = {xml.name for xml in (source / "annotations").glob("*.xml")}
    generate(source, count=6, size=64, seed=9, start=100, troubles=False)
    new_items = {xml.name for xml in (source / "annotations").glob("*.xml")} - old_items
    assert len(new_items) == 6
    monkeypatch.setenv(FAIL_ENV, "4")
    third = retrain(str(config), str(work), str(home), return_state=True)
    assert third.is_failed()
    assert by_prefix(states_of(third), "train") == ["Failed"]
    monkeypatch.delenv(FAIL_ENV)

    # The rerun: prepare's work comes back Cached, training resumes from its checkpoint.
    fourth = retrain(str(config), str(work), str(home), return_state=True)
    assert fourth.is_completed(), fourth.message
    states = states_of(fourth)
    prep = [s for name, s in states.items() if name.split("-")[0] in (
        "ingest", "shard", "process", "split", "target", "augment", "loc", "publish")]
    assert prep and set(prep) == {"Cached"}, states
    result = fourth.result()
    assert result["train"]["resumed_from_step"] == 8 and result["train"]["global_step"] == 12
    # Night 3 failed, so "since last night" still compares with night 1: the 6 new images.
    assert summary["changes"]["first_night"] and not result["changes"]["first_night"]
    assert (result["changes"]["images_added"], result["changes"]["images_removed"]) == (6, 0)
    # Last night's champion looked for suspect labels among those 6 only, not every image.
    assert result["suspects"]["images_checked"] == 6 and summary["suspects"] is None
    assert (run_dir_of(result) / "suspects" / "suspects.json").is_file()
    # ...and its gallery and counts are artifacts of the night's run (read from Prefect's API).
    artifacts = artifacts_of(fourth.state_details.flow_run_id)
    counts = json.loads(artifacts["suspect-label-counts"].data)
    assert sum(row["count"] for row in counts) == sum(
        sum(per_class.values()) for per_class in result["suspects"]["counts"].values()) > 0
    assert artifacts["suspect-labels"].type == "image"
    assert artifacts["suspect-labels"].data.startswith("data:image/png;base64,")
    assert [line for line in logs_of(fourth.state_details.flow_run_id)
            if line.startswith("resuming from") and "global step 8" in line]
    # Champion and challenger were both scored on tonight's test split: the same images with
    # the same boxes, not just as many.
    decision = result["decision"]
    assert decision["champion_version"] == 1 and decision["challenger_version"] == 2
    assert decision["champion_metric"] is not None
    run_dir = Path(result["train"]["model_dir"]).parent
    challenger_gt, champion_gt = scored(run_dir / "eval"), scored(run_dir / "champion-v1-eval")
    assert champion_gt == challenger_gt
    tonight_test = image_names(challenger_gt)
    assert result["champion_metrics"]["n_images"] == result["metrics"]["n_images"] == len(tonight_test)
    # The test split is frozen: night 1's test images are all in it, and the only others are
    # among the 6 new ones (no old image moved into test or out of it).
    assert tonight_test - new_items == night1_test


@pytest.mark.slow
def test_a_vit_nightly_runs_end_to_end_with_the_defaults(tmp_path):
    source = tmp_path / "source"
    generate(source, count=30, size=64, seed=9, troubles=False)
    config = tmp_path / "vit.yaml"
    config.write_text(nightly_config(source).replace(
        "model: {checkpoint: tiny, lora: null}", "model: {kind: vit, checkpoint: tiny}").replace(
        "warm_start: false", "warm_start: true"))
    home, work = tmp_path / "home", tmp_path / "work"
    first = retrain(str(config), str(work), str(home), return_state=True)
    assert first.is_completed(), first.message
    decision = first.result()["decision"]
    # A classifier is promoted by its macro-F1 (there is no mAP to compare).
    assert decision["metric"] == "macro_f1" and decision["promoted"], decision
    uri = embedded_tracking_uri(home / "mlflow")
    assert champion_version(uri, "nightly-vit")["version"] == 1

    generate(source, count=6, size=64, seed=9, start=100, troubles=False)
    second = retrain(str(config), str(work), str(home), return_state=True)
    assert second.is_completed(), second.message
    result = second.result()
    assert result["decision"]["champion_version"] == 1
    # train.warm_start: night 2 starts from night 1's champion, not from the tiny base.
    copy = copy_key(RegistryTarget(tracking_uri=uri, model_name="nightly-vit"), 1)
    assert result["train"]["checkpoint"] == str(work / "champion" / copy / "model")
    assert result["decision"]["champion_metric"] == result["champion_metrics"]["macro_f1"]
    # The challenger's and the champion's evaluations each keep their own artifacts.
    artifacts = artifacts_of(second.state_details.flow_run_id)
    assert {"challenger-metrics", "challenger-evaluation", "champion-metrics",
            "champion-evaluation", "promotion", "challenger-confusion-matrix",
            "champion-confusion-matrix", "challenger-loss-curve", "what-changed"} <= set(artifacts)
    assert artifacts["challenger-evaluation"].description.startswith("challenger")
    assert artifacts["champion-evaluation"].description.startswith("champion")


@pytest.mark.slow
def test_two_retrains_at_once_on_one_work_dir_one_runs_and_the_other_is_cancelled(tmp_path,
                                                                                   monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from prefect import task

    import flows.retrain

    source = tmp_path / "source"
    generate(source, count=20, size=48, seed=2, troubles=False)
    config = tmp_path / "nightly.yaml"
    config.write_text(nightly_config(source))
    args = (str(config), str(tmp_path / "work"), str(tmp_path / "home"))
    # The first run holds the work dir until the second has come and gone: a race on a busy
    # machine (the second run's start outlasting the first's whole night) cannot decide it.
    holding, release = threading.Event(), threading.Event()
    fingerprint = flows.retrain.source_fingerprint_task

    @task(name="source-fingerprint")
    def held_fingerprint(source):
        if threading.current_thread() is not threading.main_thread():
            holding.set()
            release.wait(300)
        return fingerprint.fn(source)

    monkeypatch.setattr(flows.retrain, "source_fingerprint_task", held_fingerprint)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(retrain, *args, return_state=True)
        assert holding.wait(120)  # the first run holds the work dir's lock
        second = retrain(*args, return_state=True)
        release.set()
        first = running.result()
    assert second.is_cancelled() and "another retrain holds this work dir" in second.message
    assert first.is_completed(), first.message
    assert first.result()["version"]["version"] == 1


def test_a_run_that_finds_the_work_dir_busy_exits_cleanly(tmp_path):
    source = tmp_path / "source"
    generate(source, count=2, size=32, seed=1, troubles=False)
    config = tmp_path / "nightly.yaml"
    config.write_text(nightly_config(source))
    with work_dir_lock(tmp_path / "work") as ours:
        assert ours
        state = retrain(str(config), str(tmp_path / "work"), str(tmp_path / "home"),
                        return_state=True)
    assert state.is_cancelled() and "another retrain" in state.message
    with work_dir_lock(tmp_path / "work") as ours_again:
        assert ours_again  # released when the holder finished


@pytest.mark.parametrize(("challenger", "champion", "min_gain", "promoted"), [
    (0.50, None, 0.0, True),
    (0.50, 0.40, 0.0, True),
    (0.40, 0.40, 0.0, False),  # equal keeps the champion
    (0.30, 0.40, 0.0, False),
    (0.45, 0.40, 0.1, False),  # better, but not by the margin
    (None, 0.40, 0.0, False),
])
def test_promotion_rule(challenger, champion, min_gain, promoted):
    assert decide(challenger, champion, "map", min_gain)[0] is promoted


def test_promotion_moves_the_alias_only_on_improvement(tmp_path):
    uri, model_dir = registry_and_model(tmp_path)

    def version(map_value):
        metrics = {"coco": {"map": map_value, "map50": map_value, "map75": map_value}}
        return register_version(uri, tmp_path / "artifacts", "m", model_dir, metrics,
                                {"dataset_fingerprint": "f"}), metrics

    registry, rule = RegistryTarget(tracking_uri=uri, model_name="m"), RegistryConfig()
    first, first_metrics = version(0.4)
    promote_step(registry, rule, "map", Candidate(version=first["version"], metrics=first_metrics), None)
    champion = Candidate(version=first["version"], metrics=first_metrics)
    for value, promoted in ((0.4, False), (0.3, False), (0.41, True)):
        challenger, metrics = version(value)
        decision = promote_step(registry, rule, "map",
                                Candidate(version=challenger["version"], metrics=metrics), champion)
        expected = challenger["version"] if promoted else first["version"]
        assert decision["promoted"] is promoted
        assert champion_version(uri, "m")["version"] == expected, decision
        assert decision["champion_metric"] == 0.4 and decision["challenger_metric"] == value


@pytest.mark.slow
def test_dask_runner_gives_the_same_dataset_fingerprint(tmp_path):
    source = tmp_path / "source"
    generate(source, count=20, size=48, seed=4)
    config = tmp_path / "c.yaml"
    config.write_text(nightly_config(source) + "shard_size: 4\n")
    threads = prepare(str(config), str(tmp_path / "a"), str(tmp_path / "home-a"))
    dask_config = tmp_path / "d.yaml"
    dask_config.write_text(config.read_text() + "prep: {runner: dask, dask_workers: 2}\n")
    runner = prep_task_runner(load_config(dask_config).prep)
    assert type(runner).__name__ == "DaskTaskRunner"
    on_dask = prepare.with_options(task_runner=runner)(str(dask_config), str(tmp_path / "b"),
                                                       str(tmp_path / "home-b"))
    assert on_dask["fingerprint"] == threads["fingerprint"]
    assert on_dask["images"] == threads["images"]
    # The work done in the Dask worker processes is counted too (it once read 0 there);
    # 21 = 20 images + the truncated JPEG.
    assert on_dask["work"] == threads["work"] and threads["work"]["images_decoded"] == 21
    assert json.loads((Path(tmp_path) / "b" / "prepare_report.json").read_text())["fingerprint"] \
        == threads["fingerprint"]


def test_champion_push_to_the_hub_carries_a_model_index_card(tmp_path):
    from tasks.core.caching import folder_hash
    from tasks.nightly.registry import model_card, push_champion_to_hub

    class FlakyHub:
        def __init__(self):
            self.failures, self.commits, self.repos = 1, [], []

        def create_repo(self, repo_id, **kwargs):
            self.repos.append((repo_id, kwargs))

        def create_commit(self, **kwargs):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("reset by peer")
            self.commits.append(kwargs)
            return type("Commit", (), {"oid": "c0ffee"})()

    model_dir = tmp_path / "model"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "sub" / "weights.bin").write_bytes(b"w")
    registered = folder_hash(model_dir)
    metrics = {"coco": {"map": 0.41, "map50": 0.7, "map75": 0.4}}
    card = model_card("demo-florence2", metrics, {"dataset_fingerprint": "abc"}, "demo")
    hub = FlakyHub()
    revision = push_champion_to_hub(model_dir, "factory/detector", True, card, api=hub,
                                    sleep=lambda s: None)
    assert revision == "c0ffee" and len(hub.commits) == 1
    assert hub.repos[0] == ("factory/detector", {"repo_type": "model", "private": True, "exist_ok": True})
    # One commit: the folder's files and the card; the registered folder itself is untouched
    # (a README written into it changed its hash: the next night registered it again).
    operations = {op.path_in_repo: op for op in hub.commits[0]["operations"]}
    assert sorted(operations) == ["README.md", "config.json", "sub/weights.bin"]
    assert not (model_dir / "README.md").exists() and folder_hash(model_dir) == registered
    import yaml

    header = yaml.safe_load(operations["README.md"].path_or_fileobj.decode().split("---")[1])
    results = header["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"map": 0.41, "map50": 0.7,
                                                                  "map75": 0.4}


def test_registering_the_same_model_for_the_same_dataset_twice_returns_the_same_version(tmp_path):
    from mlflow import MlflowClient

    uri, model_dir = registry_and_model(tmp_path)
    metrics = {"coco": {"map": 0.5, "map50": 0.6, "map75": 0.4}}
    first = register_version(uri, tmp_path / "artifacts", "m", model_dir, metrics,
                             {"dataset_fingerprint": "f1"})
    again = register_version(uri, tmp_path / "artifacts", "m", model_dir, metrics,
                             {"dataset_fingerprint": "f1"})  # a retry, or a rerun
    assert again["version"] == first["version"] == 1
    other_data = register_version(uri, tmp_path / "artifacts", "m", model_dir, metrics,
                                  {"dataset_fingerprint": "f2"})
    (model_dir / "config.json").write_text('{"changed": true}')
    other_files = register_version(uri, tmp_path / "artifacts", "m", model_dir, metrics,
                                   {"dataset_fingerprint": "f1"})
    assert (other_data["version"], other_files["version"]) == (2, 3)
    assert len(MlflowClient(uri).search_model_versions("name = 'm'")) == 3
