"""The nightly run's bookkeeping: what is new, one run per work dir, champion vs challenger."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.core.config import RegistryConfig
from tasks.core.logs import run_logger
from tasks.nightly.champion_alias import (
    ChampionMoved,
    alias_lock,
    move_champion,
    send_champion_changed,
)
from tasks.nightly.champion_copy import local_champion
from tasks.nightly.gate import decision_markdown, gate
from tasks.nightly.liveness import LOCK_FILE
from tasks.nightly.registry import (
    RegistryTarget,
    champion_version,
    record_decision,
)

STATE_FILE = "last_success.json"


@contextmanager
def work_dir_lock(work_dir: str | Path) -> Iterator[bool]:
    """Yields True when this run holds the work dir, False when another run already does.
    A run that finds another one active exits cleanly (it does not wait): the next night's
    schedule picks up whatever it missed. The lock dies with its process, so a killed run
    never blocks the next one."""
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        yield False
        return
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield True
    finally:
        handle.truncate(0)  # names no holder once free (a process may run several nights)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def last_success(work_dir: str | Path) -> dict | None:
    path = Path(work_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def is_new(source_fingerprint: str, last: dict | None) -> bool:
    return last is None or last.get("source_fingerprint") != source_fingerprint


def record_success(work_dir: str | Path, info: dict) -> None:
    path = Path(work_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(path)


@task(name="what-is-new")
def what_is_new_task(work_dir: str, source_fingerprint: str) -> bool:
    return is_new(source_fingerprint, last_success(work_dir))


@task(name="current-champion", retries=2, retry_delay_seconds=[5, 30])
def current_champion_task(registry: RegistryTarget, download_to: str) -> dict | None:
    """The champion version and a local copy of its model folder (None before the first one),
    keyed by registry, model name and version and checked against its registered files' hash
    (see champion_copy.py)."""
    champion = champion_version(registry.tracking_uri, registry.model_name)
    if champion is None:
        return None
    return {**champion, "model_dir": str(local_champion(registry, champion, download_to))}


class Candidate(BaseModel, frozen=True):
    """A registered version with its metrics on the frozen test split (and its model folder)."""

    version: int
    metrics: dict
    model_dir: str = ""


def promote_step(registry: RegistryTarget, config: RegistryConfig, metric: str,
                 challenger: Candidate, champion: Candidate | None,
                 work_dir: str | Path | None = None) -> dict:
    """Compare on the same split by `metric` through the gate; move `champion` only when it
    passes, and only from the champion it was compared with (under the line's alias lock in
    `work_dir`: a rollback at the same moment wins, and the night does not promote over it); the
    decision (every number, per-class deltas) is a tag on the version and a log line. Nothing
    else: what follows a promotion (the Hub push) cannot fail it (see followups.py)."""
    decision = {**gate(challenger.metrics, champion.metrics if champion else None, metric,
                       config.promote),
                "challenger_version": challenger.version,
                "champion_version": champion.version if champion else None}
    if decision["promoted"]:
        try:
            with alias_lock(work_dir) if work_dir else nullcontext():
                move_champion(registry, decision["champion_version"], challenger.version)
        except ChampionMoved as exc:
            decision.update(promoted=False, reason=f"not promoted: {exc} (a rollback while "
                            "the night ran); the next night compares with the new champion")
    run_logger().info("promotion: %s", decision["reason"])
    record_decision(registry.tracking_uri, registry.model_name, challenger.version, decision)
    if decision["promoted"]:
        send_champion_changed(registry, challenger.version, "promotion")
    return decision


@task(name="promote", retries=2, retry_delay_seconds=[5, 30])
def promote_task(registry: RegistryTarget, config: RegistryConfig, metric: str, challenger: Candidate,
                 champion: Candidate | None, work_dir: str | None = None) -> dict:
    """The promotion step, its decision shown in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact

    decision = promote_step(registry, config, metric, challenger, champion, work_dir)
    create_markdown_artifact(key="promotion", markdown=decision_markdown(decision),
                             description="champion vs challenger")
    return decision


@task(name="record-success")
def record_success_task(work_dir: str, info: dict) -> None:
    record_success(work_dir, info)
