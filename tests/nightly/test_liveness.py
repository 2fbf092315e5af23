"""Serve keeps one zombie-flow automation on the home's server, at the heartbeat in effect: a
second serve (another line, a restart) updates it rather than failing or adding another."""

import pytest

from tasks.nightly.liveness import MISSED_HEARTBEATS, ZOMBIE_AUTOMATION, ensure_zombie_automation


@pytest.mark.usefixtures("prefect_server")
def test_the_zombie_automation_is_made_once_and_follows_the_heartbeat():
    from prefect.client.orchestration import get_client

    first = ensure_zombie_automation(180)
    again = ensure_zombie_automation(30)  # a second serve, with heartbeats every 30 s
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(name=ZOMBIE_AUTOMATION)
    assert first == again and len(found) == 1
    trigger = found[0].trigger
    assert trigger.within.total_seconds() == MISSED_HEARTBEATS * 30
    assert trigger.posture == "Proactive" and "prefect.flow-run.heartbeat" in trigger.after
    assert [action.type for action in found[0].actions] == ["change-flow-run-state"]
