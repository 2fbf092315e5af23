"""Faults: a crash in the middle of prep, two runs at once on one work dir, the Hub token."""

import json
import multiprocessing
from pathlib import Path

import pytest

import tasks.images.sample
from flows.prepare import prepare
from tasks.demo.sample_data import generate
from tests.support import demo_config, logs_of

pytestmark = pytest.mark.usefixtures("prefect_server")


def make_source(tmp_path: Path, count: int = 24) -> Path:
    source = tmp_path / "source"
    generate(source, count=count, size=48, seed=21)
    config = tmp_path / "c.yaml"
    config.write_text(demo_config(source) + "shard_size: 8\n")
    return config


def test_a_crash_in_the_middle_of_prep_reruns_to_the_same_dataset(tmp_path, monkeypatch):
    config = make_source(tmp_path)
    reference = prepare(str(config), str(tmp_path / "ref"), str(tmp_path / "home-ref"))

    real, calls = tasks.images.sample.process_sample, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise MemoryError("injected: the worker died mid-shard")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.images.sample, "process_sample", crashing)
    crashed = prepare(str(config), str(tmp_path / "out"), str(tmp_path / "home"), return_state=True)
    assert crashed.is_failed()
    monkeypatch.setattr(tasks.images.sample, "process_sample", real)

    rerun = prepare(str(config), str(tmp_path / "out"), str(tmp_path / "home"))
    assert rerun["fingerprint"] == reference["fingerprint"]
    assert rerun["images"] == reference["images"]
    # What the crashed run had done was kept: the rerun decoded fewer images than the first run.
    assert rerun["work"].get("images_decoded", 0) < reference["work"]["images_decoded"]


def _prepare_in_process(args: tuple[str, str, str]) -> str:
    from tests.support import prepare_without_prefect

    source, dataset, home = args
    prepare_without_prefect(Path(source), Path(dataset), Path(home))
    return "ok"


def test_two_prepares_into_one_output_at_once_leave_no_corruption(tmp_path):
    import datasets

    source = tmp_path / "source"
    generate(source, count=40, size=48, seed=5, troubles=False)
    args = (str(source), str(tmp_path / "out" / "dataset"), str(tmp_path / "home"))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(_prepare_in_process, [args, args]) == ["ok", "ok"]
    for memo in (tmp_path / "home" / "store" / "inspect").rglob("*.json"):
        json.loads(memo.read_text())  # every memo is whole
    assert not list((tmp_path / "home").rglob("*.tmp"))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "dataset"]
    loaded = datasets.load_dataset(str(tmp_path / "out" / "dataset"))
    assert sum(len(split) for split in loaded.values()) > 40


def recording_hub(sent: list[dict]):
    """The real HfApi, stopped at the network: each call builds the request headers the way
    huggingface_hub does (reading HF_TOKEN itself) and records them instead of sending."""
    from huggingface_hub import HfApi

    class RecordingHub(HfApi):
        def create_repo(self, repo_id, **kwargs):
            sent.append(self._build_hf_headers())

        def upload_folder(self, **kwargs):
            sent.append(self._build_hf_headers())
            return type("Commit", (), {"oid": "f00d"})()

    return RecordingHub


def test_the_hub_token_never_reaches_logs_reports_or_artifacts(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client

    token = "hf_DEFECTFLOWtestTOKEN0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    sent: list[dict] = []
    monkeypatch.setattr("huggingface_hub.HfApi", recording_hub(sent))
    config = make_source(tmp_path, count=6)
    config.write_text(config.read_text().replace(
        "publish: {target: local}", "publish: {target: hub, repo_id: factory/defects}"))
    state = prepare(str(config), str(tmp_path / "out"), str(tmp_path / "home"), return_state=True)
    report = state.result()
    assert report["dataset"]["hub_revision"] == "f00d"
    # The token was read and used, by huggingface_hub, for both calls...
    assert len(sent) == 2 and all(headers["authorization"] == f"Bearer {token}" for headers in sent)
    run_id = state.state_details.flow_run_id
    logs = logs_of(run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    texts = list(logs) + [json.dumps(report), run.model_dump_json()]
    texts += [p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file()
              and p.suffix in (".json", ".jsonl", ".md", ".yaml", ".txt")]
    assert logs, "the flow run's logs were read"
    assert not [t for t in texts if token in t]  # ... and appears nowhere we write
