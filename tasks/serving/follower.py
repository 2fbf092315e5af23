"""Which model a server answers with: the line's `champion` alias (or a pinned version), followed.

A new version is downloaded (checked against its registered files' hash), loaded and warmed in
the background, then swapped in by one assignment: a batch already running finishes on the model
it started with. A version that fails to download, load or warm is refused (an alert, once) and
the old one keeps serving; it is tried again after REFUSED_RETRY polls. An unreachable registry
is never "no champion": what is loaded keeps serving and `/health` says so. A server started while
the registry is away serves the last version this replica loaded, when its files are intact.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image

from tasks.core.caching import folder_hash
from tasks.core.config import DatasetConfig
from tasks.nightly.champion_copy import is_intact, local_champion
from tasks.nightly.registry import (
    CHAMPION,
    RegistryTarget,
    RegistryUnreachable,
    _client,
    alias_version,
    ask,
)
from tasks.predict.folder import PredictSettings, line_settings, predict_loaded
from tasks.predict.inputs import ImageInput, LoadedImage

REFUSED_RETRY = 10  # polls before a refused version is tried again (a download cut short heals)
SERVED_RECORD = "served.json"  # the last version this replica loaded: its start without a registry


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int | None
    model_dir: Path
    model: object
    processor: object
    settings: PredictSettings
    metrics: dict = field(default_factory=dict)
    loaded_at: str = field(default_factory=now_iso)
    source: str = "registry"


def warm(model, processor, settings: PredictSettings) -> None:
    """One generation on a grey image: the first real request does not pay for it, and a model
    that cannot answer is found before it serves."""
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    predict_loaded(model, processor, [LoadedImage(ImageInput("warm-up", Path("warm-up")), image,
                                                  3)], settings)


def load_served(model_dir: Path, config: DatasetConfig | None, name: str, version: int | None,
                metrics: dict, source: str) -> ServedModel:
    from tasks.training.models import load_finetuned_detector

    processor, model = load_finetuned_detector(model_dir)
    settings = line_settings(model_dir, config)
    warm(model, processor, settings)
    return ServedModel(name, version, model_dir, model, processor, settings, metrics,
                       source=source)


class ModelFollower:
    """Holds `current` (a ServedModel or None) and moves it to what the registry says."""

    def __init__(self, registry: RegistryTarget, config: DatasetConfig, folder: Path,
                 pin: int | None = None, alert: Callable[[str, str], None] | None = None):
        self.registry, self.config, self.folder, self.pin = registry, config, folder, pin
        self.alert = alert or (lambda title, body: None)
        self.current: ServedModel | None = None
        self.registry_state = {"reachable": None, "since": now_iso(), "error": None}
        self.refused: dict[int, dict] = {}
        self.wake = threading.Event()
        self.stopped = threading.Event()

    def wanted(self) -> dict | None:
        """The version to serve: {version, tags, run_id}, None when the registry says there is
        none; RegistryUnreachable when it cannot say."""
        client = _client(self.registry.tracking_uri)
        name = self.registry.model_name
        if self.pin is not None:
            found = ask(f"{name} v{self.pin}", lambda: client.get_model_version(name, str(self.pin)))
        else:
            found = alias_version(client, name, CHAMPION)
        if found is None:
            return None
        return {"version": int(found.version), "tags": dict(found.tags or {}),
                "run_id": found.run_id}

    def _reachable(self, ok: bool, error: str | None = None) -> None:
        if ok != self.registry_state["reachable"]:
            self.registry_state.update(since=now_iso())
        self.registry_state.update(reachable=ok, error=error)

    def check(self) -> str:
        """One look at the registry; what happened, in words."""
        try:
            wanted = self.wanted()
        except RegistryUnreachable as exc:
            self._reachable(False, str(exc))
            return "registry unreachable: serving what is loaded"
        self._reachable(True)
        if wanted is None:
            return "no champion yet" if self.pin is None else f"v{self.pin} does not exist"
        version = wanted["version"]
        if self.current is not None and self.current.version == version:
            return f"v{version} served"
        if version in self.refused:
            self.refused[version]["polls"] += 1
            if self.refused[version]["polls"] % REFUSED_RETRY:
                return f"v{version} refused: {self.refused[version]['reason']}"
        return self._load(wanted)

    def _load(self, wanted: dict) -> str:
        version = wanted["version"]
        try:
            model_dir = local_champion(self.registry, wanted, self.folder / "models")
            metrics = self._metrics(wanted["run_id"])
            served = load_served(model_dir, self.config, self.registry.model_name, version,
                                 metrics, "pinned" if self.pin else "registry")
        except RegistryUnreachable as exc:  # could not ask: not the version's fault
            self._reachable(False, str(exc))
            return f"registry unreachable while loading v{version}: serving what is loaded"
        except Exception as exc:  # noqa: BLE001 - whatever breaks a version, the old one serves
            first = version not in self.refused
            self.refused[version] = {"reason": f"{type(exc).__name__}: {exc}"[:500],
                                     "at": now_iso(), "polls": 0}
            if first:
                self.alert(f"defectflow serving: {self.registry.model_name} v{version} refused",
                           f"v{version} could not be downloaded, loaded or warmed "
                           f"({self.refused[version]['reason']}); still serving "
                           f"v{self.current.version if self.current else None}")
            return f"v{version} refused: {self.refused[version]['reason']}"
        old = self.current
        self.current = served  # the swap: batches read `current` once, when they start
        self.refused.pop(version, None)
        self._remember(served, wanted["tags"].get("model_files"))
        self._prune({served.model_dir.parent, *([old.model_dir.parent] if old else [])})
        return f"now serving v{version}" + (f" (was v{old.version})" if old else "")

    def _prune(self, keep: set[Path]) -> None:
        """This replica's copies of versions it no longer serves go (the one it served before
        stays, for a rollback without a download): nothing under serving/ grows forever. A
        batch still running on the old model has its weights in memory, not on disk."""
        import shutil

        for folder in (self.folder / "models").iterdir():
            if folder.is_dir() and folder not in keep and not folder.name.startswith("."):
                shutil.rmtree(folder, ignore_errors=True)

    def _metrics(self, run_id: str) -> dict:
        client = _client(self.registry.tracking_uri)
        return dict(ask("metrics", lambda: client.get_run(run_id).data.metrics))

    def _remember(self, served: ServedModel, model_files: str | None) -> None:
        record = {"version": served.version, "model_dir": str(served.model_dir),
                  "model_files": model_files or folder_hash(served.model_dir),
                  "metrics": served.metrics, "loaded_at": served.loaded_at}
        path = self.folder / SERVED_RECORD
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(path)

    def start(self) -> str:
        """The first model: the registry's, else (registry away) the last one this replica
        served, verified. RuntimeError when there is neither."""
        said = self.check()
        if self.current is not None:
            return said
        if self.registry_state["reachable"] is False:
            for record in self._served_records():
                model_dir = Path(record["model_dir"])
                if is_intact(model_dir, record["model_files"]):
                    self.current = load_served(model_dir, self.config, self.registry.model_name,
                                               record["version"], record.get("metrics", {}),
                                               "local copy (registry unreachable)")
                    return ("registry unreachable: serving the local copy of "
                            f"v{record['version']}")
        raise RuntimeError(f"nothing to serve: {said}")

    def run(self, poll_seconds: float, say: Callable[[str], None] = print) -> None:
        """`start`, then `follow`: a server started before the line's first champion serves
        from the poll that finds one (`/health` says 503 until then)."""
        try:
            say(self.start())
        except Exception as exc:  # noqa: BLE001 - said, and the poll goes on
            say(str(exc))
        self.follow(poll_seconds, say)

    def _served_records(self) -> list[dict]:
        """What this replica served last, then what the line's other replicas did (newest
        first): a copy is trusted only when its files' hash is the registered one."""
        own = self.folder / SERVED_RECORD
        others = sorted(self.folder.parent.glob(f"*/{SERVED_RECORD}"),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        records = []
        for path in [own, *(p for p in others if p != own)]:
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return records

    def follow(self, poll_seconds: float, say: Callable[[str], None] = print) -> None:
        """Check every `poll_seconds`, or at once when woken (a champion.changed event)."""
        last = None
        while not self.stopped.is_set():
            self.wake.wait(poll_seconds)
            self.wake.clear()
            if self.stopped.is_set():
                return
            try:
                said = self.check()
            except Exception as exc:  # noqa: BLE001 - the follower never stops following
                self._reachable(False, f"{type(exc).__name__}: {exc}")
                said = f"could not check the registry ({type(exc).__name__}: {exc})"[:300]
            if said != last:
                say(said)
                last = said


def watch_champion_events(follower: ModelFollower, resource_id: str, every: float = 2.0) -> None:
    """Wake the follower when Prefect has a new `defectflow.champion.changed` for the model.
    Prefect away: the poll still follows the alias."""
    from prefect.client.orchestration import get_client

    from tasks.nightly.champion_alias import CHAMPION_CHANGED

    since = datetime.now(timezone.utc)
    while not follower.stopped.wait(every):
        query = {"filter": {"event": {"name": [CHAMPION_CHANGED]},
                            "resource": {"id": [resource_id]},
                            "occurred": {"since": since.isoformat()}}, "limit": 10}
        try:
            with get_client(sync_client=True) as client:
                response = client.request("POST", "/events/filter", json=query)
                events = response.json().get("events") or []
        except Exception:  # noqa: BLE001 - Prefect away: the poll carries on
            continue
        if events:
            since = max(datetime.fromisoformat(e["occurred"].replace("Z", "+00:00"))
                        for e in events) + timedelta(microseconds=1)  # `since` includes it
            follower.wake.set()
