"""Retention: the last nights and the models in use stay, the rest is collected (run folders'
checkpoints, old versions' model files, champion copies, unused manifests and store entries,
crash leftovers), and what was freed is counted."""

import json
import os
import time
from pathlib import Path

import pytest

from tasks.core.config import DatasetConfig
from tasks.core.home import Home
from tasks.core.records import Sample, write_manifest
from tasks.images.shard import ShardOutput
from tasks.images.store import store_version
from tasks.nightly.champion_copy import copy_key
from tasks.nightly.home_collection import References
from tasks.nightly.leftovers import disk_use
from tasks.nightly.registry import (
    RegistryTarget,
    embedded_tracking_uri,
    register_version,
    set_champion,
)
from tasks.nightly.retention import (
    FILES_COLLECTED,
    freed_bytes,
    retention_line,
    retention_step,
)

NOW = time.time()
OLD = NOW - 3600  # written before the run: judged
try:  # a pid no process can have
    DEAD = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
except OSError:
    DEAD = 2**22 + 1


def config(tmp_path: Path, runs: int = 3, inbox: Path | None = None) -> DatasetConfig:
    return DatasetConfig.model_validate({
        "name": "plant", "source": {"format": "voc", "images": tmp_path / "i", "annotations": tmp_path / "a"},
        "retention": {"runs": runs}, **({"prelabel": {"inbox": inbox}} if inbox else {})})


def write(path: Path, data: bytes = b"x", mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def age(folder: Path, mtime: float) -> None:
    """Every entry under `folder`, and itself, last written at `mtime`."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        os.utime(path, (mtime, mtime))


def test_the_last_nights_and_the_models_in_use_stay_and_the_rest_is_collected(tmp_path):
    work, home = tmp_path / "work", Home(tmp_path / "home")
    target = RegistryTarget(tracking_uri=embedded_tracking_uri(home.mlflow), model_name="plant-florence2")
    fingerprints = [f"{n:012d}" + "ab" * 10 for n in range(1, 6)]
    for night, fingerprint in enumerate(fingerprints, start=1):
        run = work / "runs" / f"{fingerprint[:12]}-{night:08d}"
        write(run / "checkpoints" / "checkpoint-4" / "model.safetensors", b"c" * 2000)
        write(run / "pixels" / "ab" / "abc-768x768-r3.npy", b"p" * 500)
        model = run / "model"
        write(model / "config.json", b"{}")
        write(model / "model.safetensors", bytes([night]) * 1000)
        write(run / "eval" / "metrics.json", b"{}")
        write(run / "eval" / "pr_curves.png", b"g" * 300)  # pictures outweigh a tiny model's files
        write(run / "eval" / "review" / "images" / "01-a.jpg", b"j" * 40)
        write(run / "champion-v1-eval" / "metrics.json", b"{}")
        write(run / "champion-v1-eval" / "predictions.png", b"g" * 200)
        write(run / "loss_curve.png", b"l" * 60)
        write(run / "train_summary.json", b"{}")
        age(run, NOW - (6 - night) * 3600)  # night 5 is the newest
        register_version(target.tracking_uri, home.mlflow / "artifacts", target.model_name, model,
                         {"coco": {"map": night / 10}}, {"dataset_fingerprint": fingerprint},
                         files=[run / "eval" / "metrics.json", run / "eval" / "pr_curves.png"])
    set_champion(target.tracking_uri, target.model_name, 1, {})  # the first night's model still wins
    for version in (1, 2):  # champion copies: version 2 was champion once
        write(work / "champion" / copy_key(target, version) / "model" / "config.json", b"{}" * 50)
    second = work / "runs" / f"{fingerprints[1][:12]}-00000002"
    bulk = sum(disk_use(second / name) for name in ("checkpoints", "pixels", "model"))
    pictures = 300 + 40 + 200 + 60

    report = retention_step(config(tmp_path), work, home, target, NOW, None)

    # Nights 3-5 (the last 3) and night 1 (the champion's) stay whole; night 2 keeps its record.
    runs = report["runs"]
    assert sorted(runs["kept"]) == sorted(f"{fingerprints[n][:12]}-{n + 1:08d}" for n in (0, 2, 3, 4))
    assert runs["collected"] == [second.name]
    # Its record: JSON files and each evaluation's metrics; pictures and review folders go.
    assert sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file()) == [
        "champion-v1-eval/metrics.json", "eval/metrics.json", "train_summary.json"]
    assert bulk == 2000 + 500 + 1002
    assert runs["bytes"] == bulk + pictures
    for n in (0, 2, 3, 4):
        kept = work / "runs" / f"{fingerprints[n][:12]}-{n + 1:08d}"
        assert (kept / "checkpoints" / "checkpoint-4" / "model.safetensors").is_file()
    # Version 2 (neither champion nor challenger, older than the 3 newest) loses its model
    # files; its record, tags and evaluation stay, and a tag says when and how much.
    from mlflow import MlflowClient

    client = MlflowClient(target.tracking_uri)
    versions = {int(v.version): v for v in client.search_model_versions("name = 'plant-florence2'")}
    assert sorted(versions) == [1, 2, 3, 4, 5]
    assert report["registry"] == {"versions_collected": [2], "bytes": 1002 + 300}
    collected = json.loads(versions[2].tags[FILES_COLLECTED])
    assert collected["bytes"] == 1302 and versions[2].tags["dataset_fingerprint"] == fingerprints[1]
    for number, version in versions.items():
        files = Path(version.source.removeprefix("file://"))
        assert files.is_dir() == (number != 2), number
        evaluation = sorted(p.name for p in (files.parent / "evaluation").iterdir())
        assert evaluation == (["metrics.json"] if number == 2 else ["metrics.json", "pr_curves.png"])
        assert (FILES_COLLECTED in version.tags) == (number == 2)
    # Only the champion's copy stays.
    assert [p.name for p in (work / "champion").iterdir()] == [copy_key(target, 1)]
    assert report["champion_copies"] == {"removed": [copy_key(target, 2)], "bytes": 100}
    assert freed_bytes(report) == bulk + pictures + 1302 + 100
    assert retention_line(report).startswith(
        "freed 5.5 kB (runs 4.1 kB, registry 1.3 kB, champion copies 100 bytes)")

    # Again: nothing more to collect (version 2 is already collected).
    again = retention_step(config(tmp_path), work, home, target, NOW, None)
    assert freed_bytes(again) == 0 and again["registry"]["versions_collected"] == []


def test_crash_leftovers_older_than_the_run_are_swept_and_live_ones_stay(tmp_path):
    work, home, inbox = tmp_path / "work", Home(tmp_path / "home"), tmp_path / "inbox"
    swept = [
        write(work / "prepared" / f".dataset.partial-{DEAD}-abcdef12" / "data" / "x.parquet", b"d" * 100),
        write(work / "prepared" / ".dataset.old-1234abcd" / "README.md", b"r" * 10),
        write(work / "runs" / "r" / "pixels" / "ab" / f".abc.npy.{DEAD}.tmp", b"p" * 10),
        write(work / "champion" / ".partial-v1-0123456789ab-x1y2z3" / "model" / "config.json"),
        write(home.store / "images" / "ab" / f".abc-rgb.jpg.{DEAD}.140234567890123.tmp", b"s" * 10),
        write(home.manifests / f".kept.{DEAD}.0f1e2d3c4b5a69788796a5b4c3d2e1f0.tmp", b"m" * 10),
        write(inbox / "sub" / f".photo.xml.{DEAD}.deadbeef.part", b"x" * 10),
    ]
    for leftover in swept:  # a staging folder's own time: from before the run too
        age(leftover.parent, OLD)
    age(work / "prepared" / f".dataset.partial-{DEAD}-abcdef12", OLD)
    age(work / "champion" / ".partial-v1-0123456789ab-x1y2z3", OLD)
    kept = [
        write(work / "prepared" / f".dataset.partial-{os.getpid()}-abcdef12" / "x.parquet"),  # alive
        write(work / "last_success.tmp", mtime=NOW + 5),  # written during the run
        write(home.root / "lines" / "other" / "prepared" / f".dataset.partial-{DEAD}-abcdef12" / "x"),
        write(inbox / "notes.tmp"),  # a person's file in the inbox
        write(home.manifests / ".generation", b"0123"),
        write(work / ".retrain.lock"),
    ]
    age(work / "prepared" / f".dataset.partial-{os.getpid()}-abcdef12", OLD)

    report = retention_step(config(tmp_path, inbox=inbox), work, home, None, NOW, None)

    assert [p for p in swept if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert not (work / "prepared" / f".dataset.partial-{DEAD}-abcdef12").exists()
    assert not (work / "champion" / ".partial-v1-0123456789ab-x1y2z3").exists()
    assert report["leftovers"]["bytes"] == 100 + 10 + 10 + 1 + 10
    assert report["home_leftovers"]["bytes"] == 20
    assert len(report["leftovers"]["removed"]) == 5 and len(report["home_leftovers"]["removed"]) == 2


def sample(item: str, sha: str, processed: Path | None, augmentation: str = "none") -> Sample:
    return Sample(item=item, image_path=f"/source/{item}.jpg", source=f"{item}.xml", sha256=sha,
                  processed_path=str(processed) if processed else None, augmentation=augmentation)


def test_manifests_and_store_entries_no_kept_dataset_names_are_collected(tmp_path):
    home = Home(tmp_path / "home")
    used, gone = "a" * 64, "b" * 64
    version, older = store_version(), "pil9_0_0-00000000"

    def image(sha: str, op: str, tag: str) -> Path:
        return write(home.store / "images" / sha[:2] / f"{sha}-{op}-{tag}.jpg", b"i" * 100)

    shown, flipped_spare = image(used, "rgb", version), image(used, "rgb_hflip", version)
    stale_render = image(used, "png", older)  # made by other store code: never used again
    unused_image = image(gone, "rgb", version)
    used_verdict = write(home.store / "inspect" / used[:2] / f"{used}-0123456789abcdef.json", b"{}")
    unused_verdict = write(home.store / "inspect" / gone[:2] / f"{gone}-0123456789abcdef.json", b"{}")
    named = write_manifest([sample("one", used, shown)], home.manifests, "targets")
    unnamed = write_manifest([sample("two", gone, unused_image)], home.manifests, "kept")
    newer = write_manifest([sample("three", gone, None)], home.manifests, "candidates")
    for manifest in (named, unnamed):
        os.utime(manifest.path, (OLD, OLD))
    unnamed_bytes = os.path.getsize(unnamed.path)
    os.utime(newer.path, (NOW + 5, NOW + 5))  # a run's, after the cutoff

    def shard_memo(name: str, manifest) -> Path:
        output = ShardOutput(kept=manifest, dropped_grayscale=manifest, rejected=manifest,
                             rejected_boxes=manifest, counters={})
        return write(home.store / "shards" / name[:2] / f"{name}.json",
                     output.model_dump_json().encode())

    live_memo, dead_memo = shard_memo("c" * 32, named), shard_memo("d" * 32, unnamed)
    memos = write(home.store / "memos" / "images" / "0123.tsv", b"line\n")
    generation = write(home.store / ".generation", b"0123")
    references = References(manifests={named.path})

    # Prefect's history unknown, a prepare running, or the folder of a kept manifest vanished
    # (unmounted, moved: what it names is unknown): nothing shared is touched.
    elsewhere = str(home.root.parent / "gone" / Path(named.path).name)
    for unknown in (None, References(busy="a prepare is running"),
                    References(manifests={named.path, elsewhere})):
        report = retention_step(None, None, home, None, NOW, unknown)
        assert report["skipped"] and freed_bytes(report) == 0
        assert Path(unnamed.path).exists() and unused_image.exists()

    report = retention_step(None, None, home, None, NOW, references)

    assert report["skipped"] is None
    assert [p.name for p in sorted(home.manifests.glob("*.jsonl"))] == sorted(
        Path(m.path).name for m in (named, newer))
    assert report["manifests"] == {"files": 1, "bytes": unnamed_bytes}
    for path in (shown, flipped_spare, used_verdict, live_memo, memos, generation):
        assert path.exists(), path
    for path in (stale_render, unused_image, unused_verdict, dead_memo):
        assert not path.exists(), path
    assert report["store"]["files"] == 4


def test_a_prepare_prefect_calls_running_stops_collection_only_while_its_process_lives(tmp_path):
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from prefect.states import Completed, Running

    from tasks.nightly.home_collection import _running

    work = tmp_path / "line"
    work.mkdir()

    def prepare_run(state, hours_ago: float = 1, out_dir: Path = work / "prepared"):
        started = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
        return SimpleNamespace(state=state, parameters={"out_dir": str(out_dir)},
                               start_time=started, expected_start_time=started)

    assert not _running(prepare_run(Completed()), None, NOW)
    # a `prepare` command (no line lock): running for a while, killed after a day
    assert _running(prepare_run(Running()), None, NOW)
    assert not _running(prepare_run(Running(), hours_ago=30), None, NOW)
    # a line's: as long as the process its lock names lives; never the caller's own line
    (work / ".retrain.lock").write_text(str(os.getpid()))
    assert _running(prepare_run(Running(), hours_ago=30), None, NOW)
    assert not _running(prepare_run(Running()), work, NOW)
    (work / ".retrain.lock").write_text(str(DEAD))
    assert not _running(prepare_run(Running()), None, NOW)


def test_the_retention_section_is_checked_like_every_other(tmp_path):
    from tasks.core.config import ConfigError, load_config

    path = tmp_path / "plant.yaml"
    path.write_text("name: plant\nsource: {format: voc, images: i, annotations: a}\n")
    assert load_config(path).retention.runs == 3
    for section, key in (("{runs: 0}", "retention.runs"), ("{nights: 3}", "retention.nights")):
        path.write_text(f"name: plant\nsource: {{format: voc, images: i, annotations: a}}\n"
                        f"retention: {section}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(path)
