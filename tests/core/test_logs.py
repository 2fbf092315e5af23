"""The run log keeps what happened and drops Prefect's routine per-task state lines."""

import logging

from tasks.core.logs import RoutineStateLines, quiet_routine_states


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, message, None, None)


def test_only_the_routine_completed_line_is_dropped():
    keep = RoutineStateLines().filter
    assert not keep(record("Finished in state Completed()"))
    for message in ("Finished in state Failed('boom')", "Finished in state Cached(type=COMPLETED)",
                    "step 250 | train loss 3.1 | val mAP50 0.55"):
        assert keep(record(message)), message


def test_installing_twice_adds_one_filter_per_logger():
    quiet_routine_states()
    quiet_routine_states()
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, RoutineStateLines) for f in filters) == 1
