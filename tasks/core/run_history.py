"""What Prefect recorded about a flow run: the final state of each of its task runs, its
subflows' task runs included (prepare runs as a subflow of retrain)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from uuid import UUID

StateRow = tuple[str, str, bool]  # task run name, state name, whether the state is final


def task_run_states(flow_run_id: UUID | str, settle_s: float = 15.0) -> list[tuple[str, str]]:
    """(task run name, state name) for every task run of the flow run and of its subflows.

    Prefect 3 reports task runs to its server as events, recorded after the flow has returned,
    so a read right after the flow can miss runs or see them unfinished: the client's events
    are sent first, then the runs are read until every one is final and a second read agrees.
    """
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=settle_s, at_exit=False)
    rows = settled(lambda: _read_states(UUID(str(flow_run_id))), settle_s)
    return [(name, state) for name, state, _ in rows]


# States of a task run that has not started: after an upstream failure it stays in one.
NEVER_STARTED = frozenset({"Pending", "NotReady", "Scheduled", "Late", "AwaitingConcurrencySlot"})


def settled(read: Callable[[], list[StateRow]], limit_s: float, pause_s: float = 0.1,
            unfinished_reads: int = 10, clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep, agree_s: float = 1.0) -> list[StateRow]:
    """Read until every state is final and the reads have agreed for `agree_s` (no runs at all
    may be runs not recorded yet), or `unfinished_reads` reads in a row agree (a task that
    never ran, after an upstream failure, stays Pending), or `limit_s` has passed: then the last
    read as it is. (The server records task runs one event at a time: under load it pauses
    between two for longer than two quick reads apart, so agreeing once proves nothing.)"""
    give_up = clock() + limit_s
    previous, agreeing, since = None, 0, clock()
    while True:
        rows = read()
        if rows == previous:
            agreeing += 1
        else:
            agreeing, since = 0, clock()
        finished = rows and all(final for _, _, final in rows)  # none yet: maybe not recorded
        # Only a run that never started may stay unfinished for good; a Running or Retrying one
        # is still to be recorded as it ends (late under load): that is waited for, to the limit.
        never_ran = all(final or state in NEVER_STARTED for _, state, final in rows)
        if ((agreeing and finished and clock() - since >= agree_s)
                or (agreeing >= unfinished_reads and never_ran) or clock() >= give_up):
            return rows
        previous = rows
        sleep(pause_s)


PAGE = 200  # task runs the server returns at most per read


def _read_states(flow_run_id: UUID) -> list[StateRow]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    rows: list[StateRow] = []
    pending = [flow_run_id]
    with get_client(sync_client=True) as client:
        while pending:
            run_id = pending.pop(0)
            runs: list = []
            while len(runs) % PAGE == 0:  # a night of 100,000 images has ~420 task runs
                page = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                    sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=PAGE, offset=len(runs))
                runs += page
                if not page:
                    break
            rows += [(run.name, run.state.name, run.state.is_final()) if run.state
                     else (run.name, "?", False) for run in runs]
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
            pending += [child.id for child in children]
    return rows


def state_counts(states: list[tuple[str, str]]) -> Counter:
    return Counter(state for _, state in states)
