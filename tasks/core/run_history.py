"""What Prefect recorded about a flow run: the final state of each of its task runs, its
subflows' task runs included (prepare runs as a subflow of retrain)."""

from __future__ import annotations

from collections import Counter
from uuid import UUID


def task_run_states(flow_run_id: UUID | str) -> list[tuple[str, str]]:
    """(task run name, state name) for every task run of the flow run and of its subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    states: list[tuple[str, str]] = []
    pending = [UUID(str(flow_run_id))]
    with get_client(sync_client=True) as client:
        while pending:
            run_id = pending.pop(0)
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
            states += [(run.name, run.state.name if run.state else "?") for run in runs]
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
            pending += [child.id for child in children]
    return states


def state_counts(states: list[tuple[str, str]]) -> Counter:
    return Counter(state for _, state in states)
