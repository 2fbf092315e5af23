"""A line's state, for a person or a monitor: its champion (version, metric, since when), its
last night (state, when, why it failed) and its next scheduled one from Prefect's API, the
images of its last prepare, and the disk its home and work dir take."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from tasks.core.config import DatasetConfig
from tasks.core.home import Home
from tasks.core.processes import process_alive
from tasks.nightly.leftovers import disk_use
from tasks.nightly.liveness import lock_holder
from tasks.nightly.registry import (
    CHAMPION,
    RegistryUnreachable,
    alias_version,
    embedded_tracking_uri,
)

FAILED_STATES = ("FAILED", "CRASHED")
WAITING_STATES = ("SCHEDULED", "PENDING")  # nights that have not started (or are late)
PAGE = 200
MAX_PAGES = 25  # the newest 5000 retrain runs of the home: a line's last night is among them


def when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def registry_uri(config: DatasetConfig, home: Home) -> str | None:
    """The line's registry: the config's tracking URI, or the home's embedded one once it exists
    (asking must not make an empty one)."""
    if config.registry.tracking_uri:
        return config.registry.tracking_uri
    return embedded_tracking_uri(home.mlflow) if (home.mlflow / "mlflow.db").is_file() else None


def champion_status(tracking_uri: str | None, model_name: str, metric: str) -> dict | None:
    """The champion's version, its number on `metric` and when it was registered (a champion
    is promoted the night it is registered); None when the registry says there is none, and
    `{"unreachable": why}` when it could not be asked (never "none yet")."""
    if tracking_uri is None:
        return None
    from mlflow import MlflowClient

    try:
        version = alias_version(MlflowClient(tracking_uri), model_name, CHAMPION)
    except RegistryUnreachable as exc:
        return {"unreachable": str(exc)}
    if version is None:
        return None
    value = (version.tags or {}).get(f"metric.{metric}")
    return {"version": int(version.version), "metric": metric,
            "value": None if value is None else float(value),
            "since": when(datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc))}


def _run(run) -> dict:
    return {"state": run.state.name if run.state else "?", "at": when(run.start_time or
                                                                       run.expected_start_time),
            "work_dir": run.parameters.get("work_dir"),
            "message": (run.state.message if run.state else None) or "", "flow_run": run.name,
            "failed": bool(run.state and run.state.type.value in FAILED_STATES)}


def killed(run) -> bool:
    """A night Prefect still calls running whose process is gone: it took its work dir's lock
    (a kill leaves no word to Prefect, the lock names it) and is no more."""
    work = run.parameters.get("work_dir")
    holder = lock_holder(Path(work)) if work else None
    return holder is not None and run.start_time is not None and \
        holder[1] >= run.start_time.timestamp() and not process_alive(holder[0])


def nights(config_path: Path, deployment_name: str) -> dict:
    """From Prefect: the line's last finished night, one running now, and the next scheduled
    run of its deployment (None where there is none). A night is a `retrain` run whose
    config_path is this config, or a run of the deployment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    config = str(config_path.resolve())
    found: dict = {"last_night": None, "running": None, "next_run": None, "deployment": None}
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(f"retrain/{deployment_name}")
        except ObjectNotFound:
            deployment = None
        if deployment is not None:
            found["deployment"] = {"name": deployment_name, "paused": bool(deployment.paused)}
            upcoming = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
            if upcoming:
                found["next_run"] = {"at": when(upcoming[0].expected_start_time),
                                     "flow_run": upcoming[0].name}
        for page in range(MAX_PAGES):
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=PAGE, offset=page * PAGE)
            for run in runs:
                ours = run.parameters.get("config_path") == config or (
                    deployment is not None and run.deployment_id == deployment.id)
                if not ours or run.state is None or run.state.type.value in WAITING_STATES:
                    continue
                if not run.state.is_final() and not killed(run):
                    found["running"] = found["running"] or _run(run)
                    continue
                if not run.state.is_final():
                    found["last_night"] = {**_run(run), "state": "Crashed", "failed": True,
                                           "message": "its process is gone (killed?): Prefect "
                                           "still shows it running"}
                    return found
                found["last_night"] = _run(run)
                return found
            if len(runs) < PAGE:
                break
    return found


def prepared_images(work: Path) -> dict | None:
    """The image counts of the line's last prepare (its prepare_report.json), and when."""
    report = work / "prepared" / "prepare_report.json"
    if not report.is_file():
        return None
    images = json.loads(report.read_text(encoding="utf-8"))["images"]
    return {**images, "at": when(datetime.fromtimestamp(report.stat().st_mtime, timezone.utc))}


def deployment_name(config: DatasetConfig) -> str:
    """`retrain-<dataset name>`: one retrain deployment per dataset config (`defectflow serve`
    serves it under this name, `status` reads its runs)."""
    return f"retrain-{config.name}"


def line_status(config: DatasetConfig, config_path: Path, home: Home,
                work: Path | None = None) -> dict:
    """Everything `defectflow status` says of one line; `failed`: its last night failed, or its
    registry cannot be asked (a monitor must hear of both). `work`: its work dir; by default
    where its newest night ran (`run --work`, the demo's), else `<home>/lines/<name>`."""
    found = nights(config_path, deployment_name(config))
    if work is None:
        ran_in = (found["running"] or found["last_night"] or {}).get("work_dir")
        work = Path(ran_in) if ran_in else home.line(config.name).resolve()
    champion = champion_status(registry_uri(config, home), config.model_name,
                               config.promotion_metric)
    return {"name": config.name, "config": str(config_path.resolve()), "work": str(work),
            "champion": champion, **found, "images": prepared_images(work),
            "disk": {"home": disk_use(home.root), "work": disk_use(work)},
            "failed": bool(found["last_night"] and found["last_night"]["failed"])
            or bool(champion and "unreachable" in champion)}


def home_lines(home: Home) -> list[Path]:
    """The config files of the lines a home knows (each claimed its name there)."""
    configs = []
    for record in sorted((home.root / "lines").glob("*/config.json")):
        try:
            configs.append(Path(json.loads(record.read_text())["config"]))
        except (OSError, ValueError, KeyError):
            continue
    return configs
