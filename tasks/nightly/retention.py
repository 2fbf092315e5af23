"""Retention: a line keeps the last `retention.runs` nights and the models in use, and the
rest goes, so months of nights do not fill the disk.

- Run folders (`<work>/runs/<fingerprint12>-<identity8>/`): the newest `runs` (by last write, a
  failed night's included: its checkpoints resume it) and every run of the dataset of a version
  an alias points to are kept whole; the others keep their record (their JSON files and
  each evaluation's `metrics.json`) and lose the rest: checkpoints, pixel cache, model files,
  pictures and review folders (with tiny models those pictures outweigh the checkpoints).
- Registered versions keep their record (tags, metrics, params, `evaluation/metrics.json`); the
  model files and evaluation pictures of a version that no alias points to (champion,
  challenger, or one a person set) and that is not among the `runs` newest are deleted from the
  artifact store, and the version gets a `files_collected` tag (when, bytes).
- A registry that cannot answer which versions its aliases name fails the step: nothing of
  the line is collected on a guess (RegistryUnreachable).
- Champion copies (`<work>/champion/`) of versions that are no longer champion go.
- Crash leftovers (staging folders, `*.tmp`, `.*.part`) written before the cutoff by a process
  that is gone; the home's manifests and content store: see home_collection.py.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from prefect import task

from tasks.core.config import DatasetConfig
from tasks.core.home import Home
from tasks.core.logs import run_logger
from tasks.nightly.champion_copy import copy_key
from tasks.nightly.home_collection import References, collect_home, prepared_references
from tasks.nightly.leftovers import INBOX_LEFTOVER, removed_bytes, sweep_leftovers
from tasks.nightly.registry import (
    CHAMPION,
    FILES_COLLECTED,
    RegistryTarget,
    ask,
    registered_aliases,
)


def last_active(folder: Path) -> float:
    """When a run folder was last written: its newest entry (not the folder's own time, which
    collecting it moves: a collected run must stay behind the kept ones)."""
    return max((entry.stat().st_mtime for entry in folder.iterdir()),
               default=folder.stat().st_mtime)


def split_runs(runs_dir: Path, nights: int, fingerprints: set[str]) -> tuple[list[Path], list[Path]]:
    """(kept, to collect): the newest `nights` run folders and those of these datasets are kept."""
    if not runs_dir.is_dir():
        return [], []
    folders = sorted((p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=last_active, reverse=True)
    in_use = {fingerprint[:12] for fingerprint in fingerprints}
    kept = [f for n, f in enumerate(folders) if n < nights or f.name.split("-")[0] in in_use]
    return kept, [f for f in folders if f not in kept]


RECORD = "metrics.json"  # what an evaluation keeps once its run or version is collected


def collect_run(folder: Path) -> int:
    """Keep the run's record (its JSON files, each evaluation's metrics), remove the rest; bytes
    freed."""
    freed = 0
    for child in folder.iterdir():
        if child.is_dir() and child.name.endswith("eval"):
            written = child.stat()
            freed += sum(removed_bytes(part) for part in child.iterdir() if part.name != RECORD)
            # its time stays when it was written: last_active() orders runs by it
            os.utime(child, ns=(written.st_atime_ns, written.st_mtime_ns))
        elif child.is_dir() or child.suffix != ".json":
            freed += removed_bytes(child)
    return freed


def versions_in_use(registry: RegistryTarget) -> dict[str, dict]:
    """Every alias's version and its dataset fingerprint, by alias (`champion`, `challenger`, and
    any a person set: `production`, a rollback). RegistryUnreachable when the registry cannot
    say: then nothing may be collected."""
    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri)
    found = {}
    for alias, number in registered_aliases(client, registry.model_name).items():
        version = ask(f"v{number}", lambda n=number: client.get_model_version(registry.model_name,
                                                                               str(n)))
        found[alias] = {"version": number,
                        "dataset_fingerprint": (version.tags or {}).get("dataset_fingerprint", "")}
    return found


def _artifact_bytes(repository, path: str | None = None) -> int:
    return sum(_item_bytes(repository, item) for item in repository.list_artifacts(path))


def _item_bytes(repository, item) -> int:
    return _artifact_bytes(repository, item.path) if item.is_dir else (item.file_size or 0)


def _collect_evaluation_pictures(model_source: str, tracking_uri: str) -> int:
    """The version's evaluation files next to its model (`<run>/evaluation`), but its metrics."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(model_source.rstrip("/").rsplit("/", 1)[0] + "/evaluation",
                                         tracking_uri=tracking_uri)
    freed = 0
    for item in repository.list_artifacts():
        if Path(item.path).name != RECORD:
            freed += _item_bytes(repository, item)
            repository.delete_artifacts(item.path)
    return freed


def collect_versions(registry: RegistryTarget, newest: int, in_use: set[int]) -> tuple[list[int], int]:
    """Delete the model files of versions older than the `newest` ones and not in use, tagging
    each version; (versions collected, bytes)."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = MlflowClient(registry.tracking_uri)
    versions = sorted(client.search_model_versions(f"name = '{registry.model_name}'"),
                      key=lambda v: int(v.version), reverse=True)
    collected, freed = [], 0
    for version in versions[newest:]:
        if int(version.version) in in_use or FILES_COLLECTED in (version.tags or {}):
            continue
        try:
            repository = get_artifact_repository(version.source, tracking_uri=registry.tracking_uri)
            size = _artifact_bytes(repository)
            repository.delete_artifacts()
            size += _collect_evaluation_pictures(version.source, registry.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - a store that cannot delete keeps them, that is all
            run_logger().warning("retention: the model files of v%s stay: %s", version.version, exc)
            continue
        client.set_model_version_tag(registry.model_name, version.version, FILES_COLLECTED,
                                     json.dumps({"at": datetime.now(timezone.utc).isoformat(
                                         timespec="seconds"), "bytes": size}))
        collected.append(int(version.version))
        freed += size
    return collected, freed


def line_retention(config: DatasetConfig, work: Path, registry: RegistryTarget | None,
                   cutoff: float) -> dict:
    """One line's part: run folders, registered model files, champion copies, leftovers."""
    in_use = versions_in_use(registry) if registry else {}
    kept, to_collect = split_runs(work / "runs", config.retention.runs,
                                  {v["dataset_fingerprint"] for v in in_use.values()})
    runs_freed = sum(collect_run(folder) for folder in to_collect)
    versions, registry_freed = collect_versions(
        registry, config.retention.runs, {v["version"] for v in in_use.values()}) if registry else ([], 0)
    copies, copies_freed = [], 0
    champion = in_use.get(CHAMPION)
    if registry and (work / "champion").is_dir():
        keep = copy_key(registry, champion["version"]) if champion else None
        for copy in sorted((work / "champion").iterdir()):
            if copy.is_dir() and not copy.name.startswith(".") and copy.name != keep:
                copies_freed += removed_bytes(copy)
                copies.append(copy.name)
    left, left_freed = sweep_leftovers(work, cutoff)
    if config.prelabel is not None and Path(config.prelabel.inbox).is_dir():
        more, more_freed = sweep_leftovers(Path(config.prelabel.inbox), cutoff, INBOX_LEFTOVER)
        left, left_freed = left + more, left_freed + more_freed
    return {"runs": {"kept": [f.name for f in kept], "collected": [f.name for f in to_collect],
                     "bytes": runs_freed},
            "registry": {"versions_collected": versions, "bytes": registry_freed},
            "champion_copies": {"removed": copies, "bytes": copies_freed},
            "leftovers": {"removed": left, "bytes": left_freed}}


def home_retention(home: Home, references: References | None, cutoff: float) -> dict:
    """The home's shared part: its leftovers (not in other lines' work dirs: each line sweeps
    its own, under its lock), unused manifests and content-store entries."""
    left, freed = sweep_leftovers(home.root, cutoff, skip=(home.root / "lines",))
    return {"home_leftovers": {"removed": left, "bytes": freed},
            **collect_home(home, references, cutoff)}


def freed_bytes(report: dict) -> int:
    return sum(part["bytes"] for part in report.values() if isinstance(part, dict) and "bytes" in part)


def retention_line(report: dict) -> str:
    """One line for the log and the summary: what was freed, by kind."""
    from rich.filesize import decimal

    parts = [f"{name.replace('_', ' ')} {decimal(part['bytes'])}" for name, part in report.items()
             if isinstance(part, dict) and part.get("bytes")]
    line = f"freed {decimal(freed_bytes(report))}" + (f" ({', '.join(parts)})" if parts else "")
    if report.get("runs", {}).get("collected"):
        line += f"; runs collected: {', '.join(report['runs']['collected'])}"
    if report.get("registry", {}).get("versions_collected"):
        line += "; model files of versions " + ", ".join(
            f"v{v}" for v in report["registry"]["versions_collected"])
    if report.get("skipped"):
        line += f"; manifests and content store left as they are: {report['skipped']}"
    return line


def retention_step(config: DatasetConfig | None, work: Path | None, home: Home,
                   registry: RegistryTarget | None, cutoff: float,
                   references: References | None) -> dict:
    """Everything retention collects for a line (`config` and its `work` dir; None: the home's
    shared part only), files written before `cutoff` only. `references`: what the newest
    prepares name (None: unknown, the home's manifests and store stay)."""
    report = line_retention(config, work, registry, cutoff) if config is not None else {}
    return {**report, **home_retention(home, references, cutoff)}


def references_or_none(ours: Path | None, home: Home) -> References | None:
    """What the newest prepares of `home` name, from Prefect (`ours`: the work dir whose lock
    the caller holds); None (and a warning) when it cannot say."""
    try:
        return prepared_references(ours, home=home.root)
    except Exception as exc:  # noqa: BLE001 - without it nothing shared is collected, that is all
        run_logger().warning("retention: Prefect's run history unreadable (%s): the home's "
                             "manifests and content store stay", exc)
        return None


@task(name="retention", retries=2, retry_delay_seconds=[10, 60])  # a registry away a moment
def retention_task(config: DatasetConfig, work_dir: str, home: str, registry: RegistryTarget,
                   cutoff: float) -> dict:
    report = retention_step(config, Path(work_dir), Home(Path(home)), registry, cutoff,
                            references_or_none(Path(work_dir).resolve(), Home(Path(home))))
    run_logger().info("retention: %s", retention_line(report))
    return report
