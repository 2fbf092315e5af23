"""The prepare flow end to end, on a real Prefect test server (one per session)."""

import json
import re
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from flows.prepare import prepare, step_states
from tasks.core.run_history import task_run_states
from tasks.demo.sample_data import generate
from tests.support import REPO, demo_config, shared_data

pytestmark = pytest.mark.usefixtures("prefect_server")


def run(config: Path, out: Path, home: Path) -> tuple[dict, Counter]:
    state = prepare(str(config), str(out), str(home), return_state=True)
    report = state.result()
    assert report == json.loads((out / "prepare_report.json").read_text())
    states = task_run_states(state.state_details.flow_run_id)
    # The CLI's summary counts the states the flow saw: the same task runs as the server's record
    seen = [*step_states(report["prefect_steps"]), ("report", "Completed")]
    assert Counter(seen) == Counter((name.rsplit("-", 1)[0], state) for name, state in states)
    return report, Counter(name for _, name in states)


def check_invariants(report: dict) -> None:
    images, boxes = report["images"], report["boxes"]
    assert images["found"] == images["kept"] + images["quarantined"] + images["dropped_grayscale"]
    assert boxes["found"] == boxes["kept"] + sum(boxes["dropped"].values())
    assert sum(report["splits"].values()) == images["kept"]
    assert len(report["quarantine"]) == images["quarantined"]


def config_for(tmp_path: Path, source: Path) -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(demo_config(source), encoding="utf-8")
    return path


def test_second_run_is_cached_and_one_new_image_is_the_only_work(tmp_path, home):
    source = tmp_path / "source"
    generate(source, count=24, size=64, seed=3)
    config = config_for(tmp_path, source)

    first, first_states = run(config, tmp_path / "out", home)
    check_invariants(first)
    assert first["images"]["found"] == 27  # 24 + broken JPEG + XML without image + junk file
    assert first["quarantine_reasons"] == {"image_missing": 1, "image_unreadable": 1,
                                           "junk_file": 1}
    assert first["work"]["images_decoded"] == 25
    assert first_states["Cached"] == 0

    second, second_states = run(config, tmp_path / "out", home)
    assert second["fingerprint"] == first["fingerprint"]
    # Every task that does work comes back Cached; only the report (which says what this run
    # did) runs again.
    assert second_states == Counter({"Cached": sum(first_states.values()) - 1, "Completed": 1})
    assert second["work"] == {}

    generate(source, count=1, size=64, seed=3, start=500, troubles=False)
    third, _ = run(config, tmp_path / "out", home)
    check_invariants(third)
    assert third["images"]["found"] == 28
    assert third["work"]["images_decoded"] == 1  # only the new image is decoded
    assert third["work"]["images_reused"] == 25
    assert third["fingerprint"] != first["fingerprint"]


def test_deleted_output_is_rebuilt_not_reported_cached(tmp_path, home):
    source = tmp_path / "source"
    generate(source, count=6, size=48, seed=4, troubles=False)
    config = config_for(tmp_path, source)
    run(config, tmp_path / "out", home)
    import shutil

    shutil.rmtree(tmp_path / "out" / "dataset")
    report, states = run(config, tmp_path / "out", home)
    assert (tmp_path / "out" / "dataset" / "README.md").exists()
    assert states["Completed"] == 2  # publish and report


def test_a_folder_another_run_published_into_is_rebuilt_not_reported_cached(tmp_path, home):
    first_source, other_source = tmp_path / "a", tmp_path / "b"
    generate(first_source, count=6, size=48, seed=4, troubles=False)
    generate(other_source, count=5, size=48, seed=8, troubles=False)
    first_config, other_config = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first_config.write_text(demo_config(first_source))
    other_config.write_text(demo_config(other_source))
    out = tmp_path / "out"
    first, _ = run(first_config, out, home)
    other, _ = run(other_config, out, home)  # another dataset published into the same folder
    again, states = run(first_config, out, home)
    assert again["fingerprint"] == first["fingerprint"] != other["fingerprint"]
    card = (out / "dataset" / "README.md").read_text()
    assert first["fingerprint"] in card  # the folder holds what the report says, not b's data
    assert states["Completed"] == 2  # publish and report


def test_vertical_flips_in_a_pipeline_run_mirror_boxes_top_to_bottom(tmp_path, home):
    source = tmp_path / "source"
    generate(source, count=12, size=48, seed=6, troubles=False)
    config = tmp_path / "v.yaml"
    config.write_text(demo_config(source).replace("vflip: false", "vflip: true"))
    report, _ = run(config, tmp_path / "out", home)
    train = report["splits"]["train"]
    assert report["augmented"] == {"hflip": train, "vflip": train}
    rows = datasets.load_dataset(str(tmp_path / "out" / "dataset"))["train"]
    by_kind = {(row["source_id"], row["augmentation"]): row for row in rows}
    assert len(rows) == 3 * train
    for (item, kind), row in by_kind.items():
        if kind != "vflip":
            continue
        original = by_kind[(item, "none")]
        assert row["labels"] == original["labels"]
        for (x1, y1, x2, y2), (ox1, oy1, ox2, oy2) in zip(row["boxes"], original["boxes"], strict=True):
            assert (x1, x2) == (ox1, ox2)
            assert (y1, y2) == pytest.approx((48 - oy2, 48 - oy1))
        pixels = np.asarray(row["image"].convert("L"), dtype=float)
        expected = np.asarray(original["image"].convert("L"), dtype=float)[::-1]
        # Upside down, pixel for pixel (up to JPEG re-encoding), and not merely the same picture.
        assert np.abs(pixels - expected).mean() < 3 < np.abs(pixels - expected[::-1]).mean()


def loc_targets_are_valid(dataset_dir: Path, splits: dict[str, int]) -> datasets.DatasetDict:
    loaded = datasets.load_dataset(str(dataset_dir))
    assert set(loaded) == {name for name, count in splits.items() if count}
    for split in loaded.values():
        for target, labels in zip(split["target"], split["labels"], strict=True):
            bins = [int(q) for q in re.findall(r"<loc_(\d+)>", target)]
            assert len(bins) == 4 * len(labels)
            assert all(0 <= q <= 999 for q in bins)
    return loaded


def neu_config(tmp_path: Path, policy: str) -> Path:
    text = (REPO / "datasets_cfg" / "neu_det.yaml").read_text()
    root = shared_data("neu_det")
    text = re.sub(r"source: .*", f"source: {{format: voc, images: {root / 'images'}, "
                  f"annotations: {root / 'annotations'}}}", text)
    text = re.sub(r"grayscale: \w+", f"grayscale: {policy}", text)
    path = tmp_path / f"neu_{policy}.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_neu_det_convert(tmp_path, home):
    report, _ = run(neu_config(tmp_path, "convert"), tmp_path / "out", home)
    check_invariants(report)
    assert report["images"] == {"found": 300, "kept": 300, "quarantined": 0, "dropped_grayscale": 0}
    assert report["boxes"]["found"] == report["boxes"]["kept"] == 760
    assert report["grayscale"] == {"policy": "convert", "detected": 300, "converted": 300}
    assert report["augmented"]["hflip"] == report["splits"]["train"]
    assert all(report["splits"].values())
    loaded = loc_targets_are_valid(tmp_path / "out" / "dataset", report["splits"])
    assert len(loaded["train"]) == 2 * report["splits"]["train"]
    assert loaded["test"][0]["image"].mode == "RGB"


@pytest.mark.slow
def test_neu_det_drop_drops_everything_and_still_completes(tmp_path, home):
    report, _ = run(neu_config(tmp_path, "drop"), tmp_path / "out", home)
    check_invariants(report)
    assert report["images"] == {"found": 300, "kept": 0, "quarantined": 0, "dropped_grayscale": 300}
    assert report["boxes"]["dropped"] == {"image_dropped_grayscale": 760}
    # Nothing to load (datasets cannot hold an empty split), but the card says what happened.
    assert list((tmp_path / "out" / "dataset").rglob("*.parquet")) == []
    assert "| train | 0 |" in (tmp_path / "out" / "dataset" / "README.md").read_text()


def test_sahi_terrain_coco(tmp_path, home):
    root = shared_data("sahi_terrain_coco")
    config = tmp_path / "sahi.yaml"
    config.write_text(
        f"name: sahi\nsource: {{format: coco, images: {root / 'images'}, "
        f"annotations: {root / 'annotations' / 'terrain_all_coco.json'}}}\ngrayscale: keep\n")
    report, _ = run(config, tmp_path / "out", home)
    check_invariants(report)
    assert report["images"]["kept"] == 2
    assert {"item": "terrain3.png", "reason": "image_missing"}.items() <= next(
        q for q in report["quarantine"] if q["item"] == "terrain3.png").items()
    loc_targets_are_valid(tmp_path / "out" / "dataset", report["splits"])


def test_labelimg_samples(tmp_path, home):
    root = shared_data("labelimg_samples")
    config = tmp_path / "labelimg.yaml"
    config.write_text(f"name: li\nsource: {{format: voc, images: {root}, annotations: {root}}}\n"
                      "grayscale: convert\n")
    report, _ = run(config, tmp_path / "out", home)
    check_invariants(report)
    assert report["images"]["kept"] == 3
    assert report["boxes"]["kept"] == 10 + 41 + 2
    loc_targets_are_valid(tmp_path / "out" / "dataset", report["splits"])


def test_prep_works_on_at_most_one_shard_per_core_at_once(tmp_path, monkeypatch):
    """Prefect's default runner started every shard at once, each holding its records and
    images: prep's peak memory grew with the dataset (1.3x for 10x the images)."""
    import os
    import threading
    import time

    import tasks.images.shard as shard_module

    source = tmp_path / "source"
    generate(source, count=40, size=32, seed=4, troubles=False)
    config = config_for(tmp_path, source)
    config.write_text(config.read_text() + "shard_size: 2\n")
    lock, running, most, shards = threading.Lock(), [0], [0], [0]
    real_step = shard_module.process_images_step

    def counted_step(*args, **kwargs):
        with lock:
            running[0] += 1
            shards[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.2)  # long enough for every shard that may start to be seen at once
            return real_step(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(shard_module, "process_images_step", counted_step)
    report, _ = run(config, tmp_path / "out", tmp_path / "home")
    assert shards[0] > (os.cpu_count() or 1)
    assert 1 <= most[0] <= (os.cpu_count() or 1)
    check_invariants(report)
