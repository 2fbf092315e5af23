"""Alerts: a message when a nightly run fails or promotes a new champion, sent through Apprise
(a Prefect dependency: Slack, Teams, e-mail, ntfy, a JSON webhook... one URL each).

`notify_on_failure` and `notify_on_completion` are Prefect flow state hooks: they run after the
flow's final state is known, even when the flow crashed, and never change that state (a message
that cannot be sent is logged, not raised).
"""

from __future__ import annotations

import logging

from tasks.core.config import NotifyConfig, load_config
from tasks.nightly.registry import UNREACHABLE

log = logging.getLogger("defectflow.alerts")


def send_alert(url: str, title: str, body: str) -> bool:
    """Send one message to every Apprise URL in `url` (comma separated); True if all took it."""
    import apprise

    client = apprise.Apprise()
    if not client.add(url):
        log.warning("alerts: no usable Apprise URL in notify.url")
        return False
    return bool(client.notify(title=title, body=body))


def failure_message(flow_name: str, run_name: str, message: str) -> tuple[str, str]:
    unreachable = UNREACHABLE in message  # a RegistryUnreachable's own words
    return (f"defectflow: {flow_name} run {run_name} failed"
            + (": registry unreachable" if unreachable else ""),
            f"The nightly run {run_name!r} ended Failed: {message}\n"
            + ("The model registry could not be asked: nothing was promoted, skipped or deleted "
               "on it; the next night runs again.\n" if unreachable else "")
            + "Open it in the Prefect UI to see which step failed; Retry reruns only that step and "
            "what follows (the steps before it come back Cached).")


def promotion_message(run_name: str, decision: dict) -> tuple[str, str]:
    return (f"defectflow: new champion v{decision.get('challenger_version')}",
            f"Run {run_name!r} promoted a new champion: {decision.get('reason')}")


def _notify_config(flow_run) -> NotifyConfig | None:
    """The run's `notify` settings, read from its config (None when it cannot be read)."""
    try:
        return load_config(flow_run.parameters["config_path"]).notify
    except Exception as exc:  # noqa: BLE001 - a hook must not fail the run it reports on
        log.warning("alerts: cannot read the run's config: %s", exc)
        return None


def notify_on_failure(flow, flow_run, state) -> None:
    """Flow hook (on_failure, on_crashed)."""
    notify = _notify_config(flow_run)
    if notify is None or notify.target is None or "failure" not in notify.on:
        return
    title, body = failure_message(flow.name, flow_run.name, state.message or state.name)
    if not send_alert(notify.target, title, body):
        log.warning("alerts: the failure message could not be sent")


def notify_on_completion(flow, flow_run, state) -> None:
    """Flow hook (on_completion): a message when the run promoted its challenger."""
    notify = _notify_config(flow_run)
    if notify is None or notify.target is None or "promotion" not in notify.on:
        return
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - no result to read: nothing was promoted that we know of
        return
    decision = (result or {}).get("decision") if isinstance(result, dict) else None
    if decision and decision.get("promoted"):
        title, body = promotion_message(flow_run.name, decision)
        if not send_alert(notify.target, title, body):
            log.warning("alerts: the promotion message could not be sent")
