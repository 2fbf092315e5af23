"""Landing -> event -> run: while `serve` (or `watch`) runs, labelled images landing in a line's
source folders become one Prefect event per batch (`defectflow.images.landed`, the line as its
resource), and the retrain deployment's trigger on that event starts a night with the event's
counts as its `landed` parameter. A batch complete while a night of the line runs is announced
when that night has ended: however many landed meanwhile, one more night (the deployment also
runs one night at a time). What counts, and when, is `tasks/nightly/landing.py`.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

from flows.summaries import console
from tasks.core.config import DatasetConfig
from tasks.nightly.landing import (
    LANDED_EVENT,
    STARTING_S,
    WATCH_STATE,
    Landing,
    LandingWatch,
    line_resource_id,
)
from tasks.nightly.liveness import work_dir_held

# The flow run's `landed` parameter, filled from the event by Prefect's trigger (Jinja).
EVENT_PARAMETERS = {"event": "{{ event.event }}", "event_id": "{{ event.id | string }}",
                    "images": "{{ event.payload.images }}",
                    "names_digest": "{{ event.payload.names_digest }}",
                    "examples": "{{ event.payload.examples }}"}


def landing_trigger(config: DatasetConfig):
    """The retrain deployment's trigger on the line's landing events; None with `trigger: null`."""
    from prefect.events import DeploymentEventTrigger

    if config.trigger is None:
        return None
    return DeploymentEventTrigger(
        name=f"retrain {config.name} when labelled images land",
        description=f"{LANDED_EVENT} for line {config.name}: at least "
                    f"{config.trigger.min_new_images} labelled images, then "
                    f"{config.trigger.quiet_seconds:g} s quiet",
        expect={LANDED_EVENT}, match={"prefect.resource.id": line_resource_id(config.name)},
        parameters={"landed": EVENT_PARAMETERS})


def deployment_runs(client, deployment: str, states: list) -> tuple[object | None, list]:
    """The deployment (`flow/name`, None when not deployed) and its runs in `states`."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        return None, []
    return found, client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=states))))


def night_running(deployment: str, work: Path | None = None) -> bool:
    """Whether a night of the line runs: a live process holds its `work` dir's lock (what
    Prefect cannot know: a live night its zombie automation marked Crashed after the server was
    away for longer than three heartbeats), or a run of the deployment (`flow/name`) is
    running or due to start now; False when it is not deployed (yet)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    if work is not None and work_dir_held(work):
        return True
    with get_client(sync_client=True) as client:
        _, runs = deployment_runs(client, deployment, [
            StateType.RUNNING, StateType.PENDING, StateType.CANCELLING, StateType.SCHEDULED])
    now = datetime.now(timezone.utc)
    return any(holds_batches(run, now) for run in runs)


def holds_batches(run, now: datetime) -> bool:
    """Whether a run of the deployment keeps the watch's batches back: one due within 30 s, one
    starting (Pending for less than STARTING_S: a run stuck Pending, its worker dead, holds
    nothing back for good), or one running."""
    from prefect.client.schemas.objects import StateType

    if run.state_type == StateType.SCHEDULED:
        return run.expected_start_time is not None \
            and run.expected_start_time <= now + timedelta(seconds=30)
    if run.state_type == StateType.PENDING:
        since = run.state.timestamp if run.state is not None else None
        return since is None or (now - since).total_seconds() < STARTING_S
    return True  # Running or Cancelling: Prefect's word (a killed night is Crashed by its
    # zombie automation once its heartbeats stop: liveness.py)


def announce(config: DatasetConfig, landing: Landing) -> None:
    """Say that a batch is complete (its event is pending: `send_pending` sends it)."""
    payload = landing.payload(config.name)
    console.print(f"{payload['images']} labelled images landed in {config.name} "
                  f"({', '.join(payload['examples'])}...)")


RESEND_S = 60  # an event Prefect has not confirmed is sent again after this long, same id (its
# trigger and its record may lag a loaded server by seconds: a resend it already took is a
# second night once the server restarted and forgot the ids it saw)


def send_pending(config: DatasetConfig, deployment: str, landing: LandingWatch,
                 sent: dict[str, float], now: float) -> None:
    """Each pending batch: confirmed once Prefect has its event (read back) or a night it
    started; else sent, again every RESEND_S under the same id, until then."""
    for event in list(landing.pending):
        if prefect_has(event["id"], deployment):
            landing.confirmed(event["id"])
            console.print(f"{LANDED_EVENT} {event['id'][:8]} received by Prefect")
            continue
        if now - sent.get(event["id"], float("-inf")) < RESEND_S:
            continue
        again = event["id"] in sent
        post_event(config, event)
        sent[event["id"]] = now
        console.print(f"{LANDED_EVENT} {event['id'][:8]} not received yet: sending it again"
                      if again else f"{event['payload']['images']} labelled images: "
                      f"{LANDED_EVENT} sent ({event['id'][:8]})")


def post_event(config: DatasetConfig, event: dict) -> None:
    """POST the landing event to the server's /events and raise unless it took it. Not
    `emit_event`: that hands the event to a background client that says nothing when the
    server is away and, reconnecting after a restart, replays every event it had not
    checkpointed; the restarted server has forgotten the ids it saw, so a replay beside our
    own resend was a second night."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event

    landed = Event(event=LANDED_EVENT, id=UUID(event["id"]), payload=event["payload"],
                   resource={"prefect.resource.id": line_resource_id(config.name),
                             "prefect.resource.name": config.name})
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[landed.model_dump(mode="json")])


def prefect_has(event_id: str, deployment: str) -> bool:
    """Whether Prefect has the event: among its events, or named by a night of the deployment
    (the trigger's run carries the event id in its `landed` parameter)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.events.filters import EventFilter, EventIDFilter, EventNameFilter
    from prefect.exceptions import ObjectNotFound

    wanted = EventFilter(id=EventIDFilter(id=[UUID(event_id)]),
                         event=EventNameFilter(name=[LANDED_EVENT]))
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/events/filter",
                                  json={"filter": wanted.model_dump(mode="json"), "limit": 1})
        response.raise_for_status()
        if response.json().get("events"):
            return True
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return False
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)
    return any(((run.parameters.get("landed") or {}).get("event_id")) == event_id for run in runs)


def source_folders(config: DatasetConfig) -> dict[Path, tuple[int, int] | None]:
    """The folders a line's landings arrive in, each with its identity (device, inode), None
    while it is not there: a folder made after the watch started, or deleted and made again (a
    sync tool, `rm -rf && cp`), is another folder to watch."""
    coco = config.source.format == "coco"  # its annotations are a file: its folder is watched
    folders = {config.source.images} | {p.parent if coco else p
                                        for p in config.source.annotation_paths}
    if config.source.verified_inbox is not None:
        folders.add(config.source.verified_inbox)  # a person verifying there lands an image
    found = {}
    for folder in sorted(folders):
        try:
            stat = folder.stat()
            found[folder] = (stat.st_dev, stat.st_ino) if folder.is_dir() else None
        except OSError:
            found[folder] = None
    return found


def watch_landings(config: DatasetConfig, deployment: str, stop: threading.Event,
                   tick_s: float = 1.0, work: Path | None = None) -> None:
    """Until `stop` is set: follow the config's source folders and announce each batch. When a
    folder appears, vanishes or is replaced, the watch starts again on the folders there now
    (and what they hold is looked at once quiet); with none there yet, it waits for one. With
    the line's `work` dir, what it saw and the batches Prefect has not confirmed outlive it."""
    from watchfiles import watch

    assert config.trigger is not None
    landing, sent = None, {}
    said_none, failing = False, None
    while not stop.is_set():
        if landing is None:  # its state file unwritable (the work dir gone): said, tried again
            try:
                landing = LandingWatch.starting_now(config.source, config.trigger,
                                                    work / WATCH_STATE if work else None,
                                                    config.name)
            except OSError as error:
                if failing != repr(error):
                    console.print(f"[yellow]landing watch: {error!r}; trying again[/yellow]")
                failing = repr(error)
                stop.wait(5 * tick_s)
                continue
        folders = source_folders(config)
        there = [folder for folder, identity in folders.items() if identity is not None]
        if not there:
            if not said_none:
                console.print(f"[yellow]landing watch: no source folder of {config.name} exists "
                              "yet: waiting for one (the cron still runs)[/yellow]")
                said_none = True
            stop.wait(tick_s)
            continue
        said_none = False
        landing.changed(time.monotonic())  # what the folders hold now is looked at once quiet
        for changes in watch(*there, stop_event=stop, yield_on_timeout=True,
                             rust_timeout=int(tick_s * 1000), debounce=int(tick_s * 1000),
                             raise_interrupt=False):
            now = time.monotonic()
            replaced = source_folders(config) != folders
            if changes or replaced:
                landing.changed(now)
            if replaced:
                break  # watch the folders there now
            try:
                batch = landing.batch(now, lambda: night_running(deployment, work))
                if batch is not None:
                    announce(config, batch)
                send_pending(config, deployment, landing, sent, now)
            except Exception as error:  # noqa: BLE001 - the server away a moment: try next tick
                if failing != repr(error):  # said once, not every tick
                    console.print(f"[yellow]landing watch: {error!r}; trying again every tick, "
                                  "batches kept in the work dir[/yellow]")
                failing = repr(error)
                continue
            if failing is not None:
                console.print("landing watch: Prefect answers again")
                failing = None


def in_background(config: DatasetConfig, deployment: str,
                  work: Path | None = None) -> threading.Event | None:
    """Start `watch_landings` on a daemon thread; set the returned event to stop it. None (and
    no thread) when the config's trigger is off."""
    if config.trigger is None:
        return None
    stop = threading.Event()
    threading.Thread(target=watch_landings, args=(config, deployment, stop, 1.0, work),
                     name="landing-watch", daemon=True).start()
    return stop
