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
