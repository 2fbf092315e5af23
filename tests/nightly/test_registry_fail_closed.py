"""Fail closed at the registry: an answer that could not be got (a 503, a timeout, a locked
SQLite file) is never read as "there is none". Retention deletes nothing on it, the night does
not run as the first one, `status` and `predict` say "registry unreachable"; only the registry's
own answer (no such model, or a model without that alias) means none. Every alias protects its
version, and a version whose files were collected never comes back."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.config import DatasetConfig
from tasks.core.home import Home
from tasks.nightly.champion_copy import copy_key
from tasks.nightly.registry import (
    CHAMPION,
    RegistryTarget,
    RegistryUnreachable,
    champion_version,
    embedded_tracking_uri,
    register_version,
    set_champion,
)
from tasks.nightly.retention import retention_step
from tasks.nightly.status import champion_status
from tasks.predict.model import resolve_model

NAME = "plant-florence2"
READS = ("get_registered_model", "get_model_version_by_alias", "get_model_version")


def flaky_reads(monkeypatch, failures: int | None) -> list[str]:
    """The registry's reads answer TEMPORARILY_UNAVAILABLE (what MLflow raises for a locked
    database, and a tracking server for a 503 behind its retries): the first `failures` of them,
    or all (None). Writes work. The reads that failed, by method."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    failed: list[str] = []
    for name in READS:
        real = getattr(MlflowClient, name)

        def read(self, *args, _real=real, _name=name, **kwargs):
            if failures is None or len(failed) < failures:
                failed.append(_name)
                raise MlflowException("injected: service unavailable", TEMPORARILY_UNAVAILABLE)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, read)
    return failed


def line(tmp_path: Path, versions: int = 5, champion: int = 1) -> tuple[RegistryTarget, Path, Home]:
    """`versions` registered nights; `champion` (older than the newest 3: the challengers since
    lost) is champion and has its local copy in the work dir."""
    work, home = tmp_path / "work", Home(tmp_path / "home")
    target = RegistryTarget(tracking_uri=embedded_tracking_uri(home.mlflow), model_name=NAME)
    for night in range(1, versions + 1):
        model = tmp_path / f"model-{night}"
        model.mkdir()
        (model / "config.json").write_text("{}")
        (model / "model.safetensors").write_bytes(bytes([night]) * 100)
        register_version(target.tracking_uri, home.mlflow / "artifacts", NAME, model,
                         {"coco": {"map50": night / 10}}, {"dataset_fingerprint": f"{night:064d}"})
    set_champion(target.tracking_uri, NAME, champion, {"promoted": True})
    copy = work / "champion" / copy_key(target, champion) / "model"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text("{}")
    return target, work, home


def config(tmp_path: Path) -> DatasetConfig:
    return DatasetConfig.model_validate({
        "name": "plant", "source": {"format": "voc", "images": tmp_path / "i",
                                    "annotations": tmp_path / "a"}, "retention": {"runs": 3}})


def files_of(target: RegistryTarget, version: int) -> Path:
    from mlflow import MlflowClient

    source = MlflowClient(target.tracking_uri).get_model_version(NAME, str(version)).source
    return Path(source.removeprefix("file://"))


def test_retention_deletes_nothing_when_the_registry_cannot_say_which_versions_are_in_use(
        tmp_path, monkeypatch):
    target, work, home = line(tmp_path)
    failed = flaky_reads(monkeypatch, None)
    with pytest.raises(RegistryUnreachable, match="registry unreachable"):
        retention_step(config(tmp_path), work, home, target, time.time(), None)
    assert failed
    monkeypatch.undo()
    assert all(files_of(target, version).is_dir() for version in range(1, 6))
    assert (work / "champion" / copy_key(target, 1) / "model" / "config.json").is_file()


def test_a_retention_that_failed_once_and_ran_again_keeps_the_champion(tmp_path, monkeypatch):
    target, work, home = line(tmp_path)
    flaky_reads(monkeypatch, 1)
    with pytest.raises(RegistryUnreachable):  # the step fails; its retry gets an answer
        retention_step(config(tmp_path), work, home, target, time.time(), None)
    report = retention_step(config(tmp_path), work, home, target, time.time(), None)
    assert report["registry"]["versions_collected"] == [2]  # champion v1 and the newest 3 stay
    assert files_of(target, 1).is_dir() and not files_of(target, 2).is_dir()
    assert report["champion_copies"]["removed"] == []


def test_every_alias_protects_its_version(tmp_path):
    from mlflow import MlflowClient

    target, work, home = line(tmp_path)
    client = MlflowClient(target.tracking_uri)
    client.set_registered_model_alias(NAME, "production", "2")  # a person's, in MLflow's UI
    report = retention_step(config(tmp_path), work, home, target, time.time(), None)
    assert report["registry"]["versions_collected"] == []
    assert files_of(target, 2).is_dir()
    client.delete_registered_model_alias(NAME, "production")
    report = retention_step(config(tmp_path), work, home, target, time.time(), None)
    assert report["registry"]["versions_collected"] == [2]


def test_a_version_whose_files_were_collected_is_not_found_again(tmp_path):
    target, work, home = line(tmp_path)
    retention_step(config(tmp_path), work, home, target, time.time(), None)  # collects v2's files
    # The same files for the same dataset again (a deterministic retrain after a revert): a
    # new version with files, never the collected one.
    again = register_version(target.tracking_uri, home.mlflow / "artifacts", NAME,
                             tmp_path / "model-2", {"coco": {"map50": 0.2}},
                             {"dataset_fingerprint": f"{2:064d}"})
    assert again["version"] == 6 and not again.get("existing")
    assert (files_of(target, 6) / "model.safetensors").is_file()
    # ... while a version whose files are there is still found (a retry after a half-done one).
    assert register_version(target.tracking_uri, home.mlflow / "artifacts", NAME,
                            tmp_path / "model-2", {"coco": {"map50": 0.2}},
                            {"dataset_fingerprint": f"{2:064d}"})["version"] == 6


def test_an_unanswered_champion_lookup_is_never_no_champion(tmp_path, monkeypatch):
    target, work, home = line(tmp_path)
    flaky_reads(monkeypatch, None)
    with pytest.raises(RegistryUnreachable):  # not None: the night would run as the first
        champion_version(target.tracking_uri, NAME)
    status = champion_status(target.tracking_uri, NAME, "map50")
    assert status is not None and status["unreachable"].startswith("registry unreachable")
    with pytest.raises(RegistryUnreachable):  # `predict --model champion`: not "no champion yet"
        resolve_model("champion", target.tracking_uri, NAME, tmp_path / "download")
    monkeypatch.undo()
    assert champion_version(target.tracking_uri, NAME)["version"] == 1
    assert champion_status(target.tracking_uri, NAME, "map50")["version"] == 1


def test_none_only_on_the_registrys_own_answer(tmp_path):
    from mlflow import MlflowClient

    target, _, _ = line(tmp_path, versions=1)
    assert champion_version(target.tracking_uri, "no-such-model") is None
    MlflowClient(target.tracking_uri).delete_registered_model_alias(NAME, CHAMPION)
    assert champion_version(target.tracking_uri, NAME) is None
    # A malformed name is refused with INVALID_PARAMETER_VALUE, as a missing alias is: it is
    # not "no champion".
    with pytest.raises(RegistryUnreachable):
        champion_version(target.tracking_uri, "")


def test_a_locked_registry_database_is_unreachable_not_empty(tmp_path):
    target, _, _ = line(tmp_path, versions=4)
    database = target.tracking_uri.removeprefix("sqlite:///")
    holder = subprocess.Popen(  # another process (a line's night) holds the write lock
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"db = sqlite3.connect({database!r}, isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # (MLflow waits out its busy_timeout, 20 s, before it says so)
        with pytest.raises(RegistryUnreachable, match="database is locked"):
            champion_version(target.tracking_uri, NAME)  # not None: no first night
    finally:
        holder.kill()
        holder.wait()
    assert champion_version(target.tracking_uri, NAME)["version"] == 1
    assert all(files_of(target, version).is_dir() for version in range(1, 5))

