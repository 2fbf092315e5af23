"""Whether a night is alive is Prefect's answer. A flow run emits heartbeats
(`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, on by default in Prefect 3.9: every 180 s), and an
automation on the home's server marks a run whose heartbeats stopped `Crashed` (Prefect's
"detect zombie flows"); a Crashed run gives its deployment's concurrency slot back by Prefect's
own rules, and the server's repossessor reclaims a lease nobody renews.

What Prefect cannot know stays by hand: the work dir's lock (promotion.work_dir_lock). With the
server away for longer than the missed heartbeats while a night is alive, the automation marks
that live night Crashed once the server is back (its slot goes back; its tasks run on, and it
ends Completed: Prefect lets a Crashed run finish). The landing watch holds its batches while a
live process holds the lock, whatever Prefect says; a night the cron starts meanwhile finds the
lock held and ends `Cancelled`. The live night keeps its work dir and its result.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tasks.core.processes import running_since

ZOMBIE_AUTOMATION = "defectflow: crash flow runs whose heartbeats stopped"
MISSED_HEARTBEATS = 3
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
LOCK_FILE = ".retrain.lock"  # promotion.work_dir_lock writes its holder's pid into it
FINAL_EVENTS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed")


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
