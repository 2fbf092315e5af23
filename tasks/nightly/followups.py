"""What a night does after its decision is recorded: push a new champion to the Hub, pre-label
the inbox with the champion. Either can fail (a network, a model that cannot load) without
undoing the night: the failure is logged and alerted, and left in the work dir for the next
night to do again (a night with nothing new does it too)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from tasks.core.config import NotifyConfig, RegistryConfig
from tasks.core.logs import run_logger
from tasks.nightly.alerts import send_alert
from tasks.nightly.registry import (
    RegistryTarget,
    model_card,
    push_champion_to_hub,
    record_hub_revision,
)

PENDING_FILE = "followups_pending.json"
PUSH = "push-champion"
PRELABEL = "prelabel"


def pending_followups(work_dir: str | Path) -> dict[str, dict]:
    """What earlier nights left undone, by step name, with what each needs to run again."""
    path = Path(work_dir) / PENDING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def set_pending(work_dir: str | Path, name: str, needs: dict | None) -> None:
    """Leave `name` for the next night (with what it needs), or, with None, mark it done."""
    path = Path(work_dir) / PENDING_FILE
    pending = pending_followups(work_dir)
    if needs is None:
        pending.pop(name, None)
    else:
        pending[name] = needs
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pending, indent=1, sort_keys=True))
    tmp.replace(path)


def followup_message(name: str, error: str) -> tuple[str, str]:
    return (f"defectflow: {name} failed after the night completed",
            f"The night's decision is recorded and stands; the {name} step failed: {error}\n"
            "It is tried again at the next night.")


@task(name="push-champion", retries=2, retry_delay_seconds=[5, 30])
def push_champion_task(registry: RegistryTarget, config: RegistryConfig, version: int,
                       model_dir: str, metrics: dict, lineage: dict) -> str:
    """The champion's model folder and a model card (`model-index` metrics) to the Hub; its Hub
    revision becomes a tag of the version."""
    card = model_card(registry.model_name, metrics, lineage, registry.model_name)
    revision = push_champion_to_hub(model_dir, config.hub_repo, config.hub_private, card)
    record_hub_revision(registry.tracking_uri, registry.model_name, version, revision)
    run_logger().info("champion v%d pushed to the Hub (%s @ %s)", version, config.hub_repo,
                      revision)
    return revision


@task(name="followup-failed")
def followup_failed_task(work_dir: str, name: str, needs: dict, error: str,
                         notify: NotifyConfig) -> None:
    """Log and alert a failed step after the decision, and leave it for the next night."""
    set_pending(work_dir, name, needs)
    run_logger().error("%s failed after the night's decision was recorded: %s (the night stands; "
                       "it is tried again at the next night)", name, error)
    if notify.target is not None and "failure" in notify.on:
        title, body = followup_message(name, error)
        if not send_alert(notify.target, title, body):
            run_logger().warning("alerts: the %s failure message could not be sent", name)
