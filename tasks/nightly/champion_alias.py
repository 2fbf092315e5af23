"""Moving a line's `champion` alias: a night's promotion and a person's rollback, one at a time.

Both take the line's alias lock (a file lock in the work dir, held for the seconds a move takes,
not for the night) and compare before they set: a promotion moves the alias only from the
champion it was compared with, a rollback only from the champion it read. The alias it leaves is
kept under `previous` (retention keeps the files of every aliased version), and every move sends
`defectflow.champion.changed`, which the line's model servers follow at once (they also poll).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from tasks.nightly.registry import (
    CHAMPION,
    FILES_COLLECTED,
    RegistryTarget,
    _client,
    ask,
    registered_aliases,
)

PREVIOUS = "previous"
CHAMPION_CHANGED = "defectflow.champion.changed"
ALIAS_LOCK = ".champion-alias.lock"
ROLLBACK_TAG = "rollback"  # never `promotion`: a night's decision stays what it was


class ChampionMoved(RuntimeError):
    """The champion is no longer the version the move was decided against."""


class RollbackRefused(ValueError):
    """A rollback that cannot be done: no version to go back to, or its files were collected."""


@contextmanager
def alias_lock(work_dir: str | Path, timeout: float = 120) -> Iterator[None]:
    from filelock import FileLock

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(work_dir) / ALIAS_LOCK), timeout=timeout):
        yield


def move_champion(registry: RegistryTarget, expected: int | None, version: int) -> None:
    """`champion` -> `version`, `previous` -> the champion it replaces; ChampionMoved when the
    champion is not `expected` now. Call it holding `alias_lock`."""
    client = _client(registry.tracking_uri)
    name = registry.model_name
    now = registered_aliases(client, name).get(CHAMPION)
    if now != expected:
        raise ChampionMoved(f"{name}: champion is v{now}, not v{expected} as it was read")
    if now is not None and now != version:
        ask("set previous", lambda: client.set_registered_model_alias(name, PREVIOUS, str(now)))
    ask("set champion", lambda: client.set_registered_model_alias(name, CHAMPION, str(version)))


def rollback(registry: RegistryTarget, work_dir: str | Path, to: int | None = None,
             by: str = "") -> dict:
    """Move `champion` back to `to` (default: the `previous` alias), recorded in the version's
    `rollback` tag; the old champion becomes `previous`. RollbackRefused when there is nothing to
    go back to or the version's files were collected."""
    client = _client(registry.tracking_uri)
    name = registry.model_name
    with alias_lock(work_dir):
        aliases = registered_aliases(client, name)
        champion = aliases.get(CHAMPION)
        target = to if to is not None else aliases.get(PREVIOUS)
        if champion is None:
            raise RollbackRefused(f"{name} has no champion yet: nothing to roll back")
        if target is None:
            raise RollbackRefused(f"{name} has no `previous` version: give --to VERSION")
        if target == champion:
            raise RollbackRefused(f"v{target} is the champion already")
        version = ask(f"v{target}", lambda: client.get_model_version(name, str(target)))
        if FILES_COLLECTED in (version.tags or {}):
            raise RollbackRefused(f"v{target}'s model files were collected by retention: "
                                  "it cannot be served again")
        move_champion(registry, champion, target)
        record = {"from_version": champion, "to_version": target, "by": by,
                  "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        ask("tag rollback", lambda: client.set_model_version_tag(name, str(target), ROLLBACK_TAG,
                                                                 json.dumps(record)))
    send_champion_changed(registry, target, "rollback")
    return record


def send_champion_changed(registry: RegistryTarget, version: int, why: str) -> bool:
    """Tell the line's model servers at once; False when Prefect could not be told (they poll
    the alias too, so a lost event only delays them)."""
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL

    from tasks.core.logs import run_logger

    if not PREFECT_API_URL.value():
        return False  # a process's own temporary server: no model server listens there

    event = Event(event=CHAMPION_CHANGED, payload={"version": version, "why": why},
                  resource={"prefect.resource.id": champion_resource_id(registry),
                            "prefect.resource.name": registry.model_name})
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.request("POST", "/events", json=[event.model_dump(mode="json")])
        return True
    except Exception as exc:  # noqa: BLE001 - the servers' poll finds the move
        run_logger().warning("%s not sent (%s): the model servers find v%s at their next poll",
                             CHAMPION_CHANGED, exc, version)
        return False


def champion_resource_id(registry: RegistryTarget) -> str:
    return f"defectflow.model.{registry.model_name}"
