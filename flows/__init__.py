"""Prefect flows: they only compose the tasks in `tasks/`."""

import os as _os

# Prefect reads its settings when first imported: whoever imports us first (the CLI, a test, a
# worker, `python -c`), the local server must not phone home and may take its time to start.
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
_os.environ.setdefault("DO_NOT_TRACK", "1")
_os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
