"""What Prefect recorded about a flow run: the final state of each of its task runs."""

from __future__ import annotations

from collections import Counter
from uuid import UUID


def task_run_states(flow_run_id: UUID | str) -> list[tuple[str, str]]:
    """(task run name, state name) for every task run of the flow run, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    return [(run.name, run.state.name if run.state else "?") for run in runs]


def state_counts(states: list[tuple[str, str]]) -> Counter:
    return Counter(state for _, state in states)
