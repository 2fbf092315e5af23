"""What `make chaos` checks after every night, read from the servers directly (never through the
fault proxy): each function returns the invariant breaks it found, one line each."""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from tasks.core.retry import with_backoff

LEFTOVERS = re.compile(r"(^\.dataset\.partial-|\.tmp$|\.part$|\.staging)")
FAULT_WORDS = re.compile(r"registry unreachable|database is locked|503|Connection ?(refused|reset|"
                         r"aborted)|RemoteDisconnected|ConnectError|Retrying", re.IGNORECASE)


def api(port: int, path: str, body: dict | None = None, attempts: int = 6):
    """Prefect's API, asked as its own client asks it: a 5xx (Prefect's answer while its SQLite
    database is locked by the nights) or a lost connection is asked again with the project's
    backoff (`with_backoff`: 1 + 2 + 4 + 8 + 16 s), then raised. A POST is repeated only after
    answers that mean it was not done (a 5xx, a refused connection), never after one dropped
    midway, which may have created what it asked for."""
    url = f"http://127.0.0.1:{port}/api{path}"

    def ask():
        try:
            answer = httpx.post(url, json=body, timeout=30) if body is not None else \
                httpx.get(url, timeout=30)
        except httpx.TransportError as error:
            if body is not None and not isinstance(error, httpx.ConnectError):
                raise RuntimeError(f"POST {path}: the connection dropped midway") from error
            raise
        answer.raise_for_status()
        return answer.json()

    return with_backoff(ask, attempts=attempts, first_delay=1.0, log=lambda _: None)


def registry_breaks(tracking_uri: str, model_name: str, champion_before: int | None,
                    versions_checked: set[int]) -> tuple[list[str], int | None]:
    """The champion's files download and load; no version an alias points to lost its files;
    every promotion decided since the last check compared the challenger with the champion
    there was before the night (`champion_before`). Returns the breaks and the champion now."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.nightly.registry import download_version
    from tasks.training.models import load_finetuned_detector

    client = MlflowClient(tracking_uri)
    breaks = []
    try:
        aliases = {a: int(v) for a, v in client.get_registered_model(model_name).aliases.items()}
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        aliases = {}
    for alias, number in sorted(aliases.items()):
        version = client.get_model_version(model_name, str(number))
        with tempfile.TemporaryDirectory() as folder:
            try:
                model_dir = download_version(tracking_uri, version.run_id, folder)
                if alias == "champion":
                    load_finetuned_detector(model_dir)
            except Exception as error:  # noqa: BLE001 - what broke is the finding
                breaks.append(f"{model_name}: alias {alias} -> v{number}: {error!r:.200}")
    # Versions decided since the last check, oldest first: each compared its challenger with
    # the champion of its moment (the one before it, or the last one promoted since).
    expected, untagged = champion_before, set()
    for version in sorted(client.search_model_versions(f"name = '{model_name}'"),
                          key=lambda v: int(v.version)):
        number = int(version.version)
        if number in versions_checked:
            continue
        if "promotion" not in version.tags:
            untagged.add(number)  # killed before its decision was recorded, or not decided yet
            continue
        versions_checked.add(number)
        decision = json.loads(version.tags["promotion"])
        compared = decision.get("champion_version")
        # (a night killed between moving the alias and tagging its decision left an untagged
        # champion: the next night rightly compares with it)
        if compared != expected and compared not in untagged:
            breaks.append(f"{model_name} v{number}: compared with champion v{compared}, the "
                          f"champion was v{expected}")
        if decision.get("promoted"):
            expected = number
    return breaks, aliases.get("champion")


def dataset_breaks(work: Path, labelled: set[str]) -> list[str]:
    """Every labelled image there (its stem) is in the line's prepared dataset."""
    import pyarrow.dataset as ds

    folder = work / "prepared" / "dataset"
    files = [str(p) for p in folder.rglob("*.parquet")] if folder.is_dir() else []
    present = {Path(item).stem for item in
               ds.dataset(files, format="parquet").to_table(columns=["source_id"])
               .column("source_id").to_pylist()} if files else set()
    missing = sorted(labelled - present)
    return [f"{work.name}: {len(missing)} labelled images not in the night's dataset "
            f"({', '.join(missing[:3])}...)"] if missing else []


def event_breaks(runs: list[dict]) -> list[str]:
    """One landing event starts at most one night."""
    events = Counter((run["parameters"].get("landed") or {}).get("event_id") for run in runs)
    return [f"event {event} started {count} nights" for event, count in events.items()
            if event and count > 1]


def faults_seen(port: int, run_id: str) -> int:
    """Lines of a night's log that report a fault it met (a retry, an unreachable registry)."""
    logs = api(port, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                      "limit": 200})
    return sum(1 for log in logs if FAULT_WORDS.search(log["message"]))


LOCK_NAME = ".retrain.lock"  # the work dir's lock, by that name in every version of the code


def lock_holder_pid(work: Path) -> int | None:
    """The live process that has the work dir's lock open (a night holds it for its whole run),
    read from the processes themselves: the harness asks no module of the code it tests, so it
    runs as it is on an older commit."""
    import psutil

    lock = str(work / LOCK_NAME)
    for process in psutil.process_iter(["pid"]):
        try:
            if any(handle.path == lock for handle in process.open_files()):
                return process.info["pid"]
        except (psutil.Error, OSError):
            continue
    return None


def leftover_breaks(home: Path, works: list[Path], port: int) -> list[str]:
    """Nothing left behind once every night ended and serve stopped: no staging files, no lock
    held, no night process, no concurrency slot or lease taken."""
    import psutil

    breaks = [f"left behind: {p.relative_to(home.parent)}" for top in (home, *works)
              for p in top.rglob("*") if LEFTOVERS.search(p.name)]
    breaks += [f"{work.name}: its lock is still held" for work in works if lock_holder_pid(work)]
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "prefect.engine" in command or (" run " in command and "defectflow" in command):
            breaks.append(f"a night's process is still there: {process.info['pid']} "
                          f"{command[:120]}")
    limits = api(port, "/v2/concurrency_limits/filter", {})
    breaks += [f"concurrency limit {limit['name']}: {limit['active_slots']} slots still taken"
               for limit in limits if limit.get("active_slots")]
    return breaks
