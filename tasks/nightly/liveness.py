"""Whether a night is alive is Prefect's answer. A flow run emits heartbeats
(`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, on by default in Prefect 3.9: every 180 s), and an
automation on the home's server marks a run whose heartbeats stopped `Crashed` (Prefect's
"detect zombie flows"). One night at a time per line is a global concurrency limit of one slot
(`night_slot`), taken inside the night under a lease as long as those missed heartbeats: the
server's repossessor gives back the slot of a night nobody renews (its process killed).

Not the deployment's own concurrency limit: a run marked Crashed loses that lease, and Prefect's
engine then stops the run "to prevent over-allocation" (seen as a spurious 12 h
TaskRunTimeoutError in whatever task ran). A live night marked Crashed (its process frozen, its
machine swapping, its server away for longer than the missed heartbeats) must run on: this slot
is taken with `raise_on_lease_renewal_failure=False`, and ends Completed (Prefect lets a Crashed
run finish).

What Prefect cannot know stays by hand: the work dir's lock (promotion.work_dir_lock). The
landing watch holds its batches while a live process holds the lock, whatever Prefect says; a
night that gets the slot meanwhile finds the lock held and ends `Cancelled`. The live night
keeps its work dir and its result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from tasks.core.processes import running_since

ZOMBIE_AUTOMATION = "defectflow: crash flow runs whose heartbeats stopped"
MISSED_HEARTBEATS = 3
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
LOCK_FILE = ".retrain.lock"  # promotion.work_dir_lock writes its holder's pid into it
FINAL_EVENTS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed")


DEFAULT_LEASE_S = 300.0  # Prefect's own default lease, with heartbeats off


def night_slot(deployment: str) -> str:
    """The global concurrency limit a line's nights share: `deployment` is `retrain-<name>`."""
    return f"defectflow-night-{deployment}"


def slot_lease_seconds(heartbeat_s: int | None) -> float:
    """A night's slot lease: as long as the silence that has it marked Crashed."""
    return float(MISSED_HEARTBEATS * heartbeat_s) if heartbeat_s else DEFAULT_LEASE_S


def ensure_night_slot(deployment: str) -> str:
    """The line's one-slot global concurrency limit on the home's server, made when missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    name = night_slot(deployment)
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
        except ObjectAlreadyExists:  # made at the same moment by another night: once is enough
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name


@contextmanager
def holding_night_slot(deployment: str) -> Iterator[None]:
    """Wait for the line's slot and hold it for the block; the limit is made when missing (a
    deployment of prefect.yaml on a worker), and then must exist: a limit deleted meanwhile is
    an error, never a night without a limit. A lease Prefect could not renew (this night marked
    Crashed while alive) lets the night run on: its work dir's lock keeps other nights off."""
    from prefect.concurrency.sync import concurrency

    ensure_night_slot(deployment)
    said_once = LostLeaseSaidOnce()
    loggers = [logging.getLogger("prefect.concurrency"), logging.getLogger("prefect.flow_runs")]
    for logger in loggers:
        logger.addFilter(said_once)
    try:
        with concurrency(night_slot(deployment), occupy=1, strict=True,
                         lease_duration=slot_lease_seconds(heartbeat_seconds()),
                         raise_on_lease_renewal_failure=False):
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(said_once)


class LostLeaseSaidOnce(logging.Filter):
    """Prefect reports a lease it could not renew three times over, twice with a traceback (it
    expects the run to be stopped); for a night that runs on, one line says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "concurrency lease renewal" in message:
            return False  # its retries and its error: the warning below says it once
        if message.startswith("Concurrency lease renewal failed"):
            record.msg, record.args = (
                "this night's slot lease is lost (Prefect marked it Crashed while it was alive, "
                "or lost sight of it): it runs on; its work dir's lock keeps other nights off its "
                "files"), ()
            record.exc_info = record.exc_text = None
        return True


def heartbeat_seconds() -> int | None:
    """The heartbeat frequency this process's flow runs (and serve's, which inherit its
    environment) use; None when heartbeats are off."""
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


def zombie_automation(heartbeat_s: int):
    """Prefect's zombie-flow automation: a flow run that has sent a heartbeat and then sends
    neither another one nor a final state for MISSED_HEARTBEATS heartbeats is marked Crashed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"a flow run silent for {MISSED_HEARTBEATS} heartbeats of {heartbeat_s} s "
                    "(its process killed, its machine gone) is Crashed: its slot goes back",
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT}, expect={HEARTBEAT_EVENT, *FINAL_EVENTS},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=MISSED_HEARTBEATS * heartbeat_s)),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {MISSED_HEARTBEATS * heartbeat_s} s: its process is gone "
                    "(killed?); marked by the zombie-flow automation")])


def ensure_zombie_automation(heartbeat_s: int) -> str:
    """Create the home server's zombie automation, or bring it to this heartbeat; its id."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    wanted = zombie_automation(heartbeat_s)
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(name=ZOMBIE_AUTOMATION)
        if not found:
            core = AutomationCore(**wanted.model_dump(exclude={"id"}))
            return str(client.create_automation(automation=core))
        # (an update takes no owner_resource: Prefect's own Automation.update leaves it out)
        core = AutomationCore(**wanted.model_dump(exclude={"id", "owner_resource"}))
        client.update_automation(automation_id=found[0].id, automation=core)
        return str(found[0].id)


def lock_holder(work: Path) -> tuple[int, float] | None:
    """The pid a work dir's lock names (its last holder; Prefect never hears of a killed run,
    which stays Running) and when that one took it, or None."""
    try:
        path = work / LOCK_FILE
        return int(path.read_text().strip()), path.stat().st_mtime
    except (OSError, ValueError):
        return None


def names_no_holder(lock: Path) -> bool:
    try:
        return lock.stat().st_size == 0
    except OSError:
        return False


def work_dir_held(work: Path) -> bool:
    """Whether a live process holds the work dir's lock (a night, whatever Prefect says of it:
    one the zombie automation marked Crashed while its server was away is still at work)."""
    holder = lock_holder(work)
    return holder is not None and running_since(*holder)
