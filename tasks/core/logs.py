"""One logger for the work: the Prefect run log inside a flow or task run (what the UI shows),
the standard `logging` module outside one (the tests, the benchmarks, a notebook)."""

from __future__ import annotations

import logging


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("defectflow")


class RoutineStateLines(logging.Filter):
    """Drops Prefect's "Finished in state Completed()" line, written once per task run (and flow
    run): a run log of a hundred of them hides what happened; the UI shows each state anyway.
    Every other state (Failed, Cached, Crashed...) still gets its line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Finished in state Completed()"


def quiet_routine_states() -> None:
    """Install `RoutineStateLines` on Prefect's run loggers (once), for the console and the run
    log the UI shows alike."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineStateLines) for f in logger.filters):
            logger.addFilter(RoutineStateLines())


# On import too: a deployment's runner starts each flow run in a spawned process that unpickles
# the flow function by value (flows/retrain.py's own top level never runs there), but every
# task module imports this one.
quiet_routine_states()
