"""A missing intermediate means "recompute", never a crash: the home's manifests or content store
deleted (whole, or one file) under Prefect's persisted cache, then prepare again."""

import json
import shutil
from pathlib import Path

import pytest

from flows.prepare import prepare
from tasks.core.run_history import task_run_states
from tasks.demo.sample_data import generate
from tests.support import demo_config

pytestmark = pytest.mark.usefixtures("prefect_server")


def prepared(tmp_path: Path, home: Path, out: str = "out") -> tuple[dict, list[tuple[str, str]]]:
    """The report of a prepare run and (task run name, final state) of each of its task runs."""
    state = prepare(str(tmp_path / "demo.yaml"), str(tmp_path / out), str(home), return_state=True)
    report = state.result()
    return report, task_run_states(state.state_details.flow_run_id)


@pytest.fixture
def first_run(tmp_path: Path, home: Path) -> dict:
    source = tmp_path / "source"
    # grayscale: convert re-renders the gray images into the store, so records name store files
    generate(source, count=10, size=48, seed=11, troubles=False)
    (tmp_path / "demo.yaml").write_text(demo_config(source), encoding="utf-8")
    report, states = prepared(tmp_path, home)
    assert report["grayscale"]["converted"] > 0  # some records name store files
    assert report["augmented"]["hflip"] > 0
    assert "Cached" not in {state for _, state in states}
    return report


def test_deleted_manifests_folder_means_recompute(tmp_path, home, first_run):
    shutil.rmtree(home / "manifests")
    report, states = prepared(tmp_path, home)
    assert report["fingerprint"] == first_run["fingerprint"]
    assert report["images"] == first_run["images"]
    # every step ran again on the recreated folder (none trusted a result naming gone files),
    # but for the fingerprint (of the same content) and publish (of the same dataset); the
    # images were not decoded again: the content store still knew them
    assert {name.rsplit("-", 1)[0] for name, state in states if state == "Cached"} \
        <= {"dataset-fingerprint", "publish"}
    assert report["work"].get("images_decoded", 0) == 0
    again, states = prepared(tmp_path, home)  # and the recomputed results are trusted again
    assert again["fingerprint"] == first_run["fingerprint"]
    assert {state for name, state in states if not name.startswith("report")} == {"Cached"}


def test_deleted_store_folder_means_recompute(tmp_path, home, first_run):
    shutil.rmtree(home / "store")
    # a new output folder: publish must read every image the records name from the store
    report, _ = prepared(tmp_path, home, out="elsewhere")
    assert report["fingerprint"] == first_run["fingerprint"]
    assert report["work"]["images_decoded"] == first_run["work"]["images_decoded"]
    assert (tmp_path / "elsewhere" / "dataset" / "README.md").is_file()


def test_one_deleted_manifest_means_its_step_runs_again(tmp_path, home, first_run):
    targets = sorted((home / "manifests").glob("targets-*.jsonl"))
    assert len(targets) == 1
    targets[0].unlink()
    report, states = prepared(tmp_path, home, out="elsewhere")  # publish reads the targets
    assert report["fingerprint"] == first_run["fingerprint"]
    assert targets[0].is_file()
    assert "Completed" in {state for name, state in states if name.startswith("loc-targets")}


def test_one_lost_store_image_is_made_again_where_its_record_names_it(tmp_path, home, first_run):
    [targets] = (home / "manifests").glob("targets-*.jsonl")
    records = [json.loads(line) for line in targets.read_text().splitlines()]
    converted = next(r for r in records if r["processed_path"] and r["augmentation"] == "none")
    flipped = next(r for r in records if r["augmentation"] == "hflip")
    lost = {Path(r["processed_path"]): Path(r["processed_path"]).read_bytes()
            for r in (converted, flipped)}
    for path in lost:
        path.unlink()
    report, _ = prepared(tmp_path, home, out="elsewhere")  # publish reads every image again
    assert report["fingerprint"] == first_run["fingerprint"]
    assert {path: path.read_bytes() for path in lost} == lost
