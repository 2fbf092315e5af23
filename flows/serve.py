"""serve = a Prefect server that lasts (the one PREFECT_API_URL names, the home's lasting one,
or the home's own for as long as serve runs) -> the retrain deployment on the config's schedule,
with this call's config, work dir and home, one run at a time across the deployment (a global
concurrency limit each night takes: see liveness)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from flows.landing import in_background as watch_in_background
from flows.landing import landing_trigger
from flows.retrain import retrain
from flows.summaries import console
from tasks.core.config import load_config
from tasks.core.home import resolve_home
from tasks.nightly.liveness import ensure_night_slot, ensure_zombie_automation, heartbeat_seconds
from tasks.nightly.server import prefect_server
from tasks.nightly.status import deployment_name


def deployment_parameters(config_path: Path, work: Path, home: str | None) -> dict[str, str]:
    """What every run of the deployment gets. Serving again replaces the deployment's
    parameters with these (Prefect upserts a deployment by flow and name)."""
    return {"config_path": str(config_path.resolve()), "work_dir": str(work.resolve()),
            "home": str(resolve_home(home).root)}


def serve_retrain(config_path: Path, work: Path, home: str | None, cron: str | None = None,
                  port: int = 4200, announce: bool = True) -> None:
    """Serve until Ctrl-C; scheduled runs appear in the Prefect UI at the server's address.
    `announce`: print where it serves (a script that starts serve may say it itself)."""
    from prefect.schedules import Cron

    # Ctrl-C (SIGINT) stops serve even when it was started in the background of a script, which
    # starts it with SIGINT ignored: a demo or a test stopping it would otherwise wait, then kill.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config = load_config(config_path)
    schedule = Cron(cron or config.schedule.cron, timezone=config.schedule.timezone)
    where = resolve_home(home)
    trigger = landing_trigger(config)
    with prefect_server(where.prefect, port=port) as api_url:
        if announce:
            console.print(f"serving {deployment_name(config)} on {schedule.cron!r} "
                          f"({schedule.timezone}) against {api_url}; the UI: {api_url[:-4]}; "
                          f"work dir {work.resolve()}. One run at a time; Ctrl-C stops.")
            console.print(landing_line(config))
        deployment = f"{retrain.name}/{deployment_name(config)}"
        ensure_night_slot(deployment_name(config))  # one night at a time: see liveness
        if heartbeat := heartbeat_seconds():  # a killed night is Crashed by Prefect, slot freed
            ensure_zombie_automation(heartbeat)
        else:
            console.print("[yellow]flow-run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY):"
                          " a night killed with its process stays Running and holds the "
                          "deployment's one slot until marked by hand[/yellow]")
        stop_watching = watch_in_background(config, deployment, work.resolve())
        try:
            serve_through_outages(lambda: retrain.serve(
                name=deployment_name(config), schedule=schedule, limit=1,
                print_starting_message=announce, triggers=[trigger] if trigger else None,
                parameters=deployment_parameters(config_path, work, home)), api_url)
        finally:
            if stop_watching is not None:
                stop_watching.set()


def serve_through_outages(serve_once, api_url: str, wait_s: float = 2.0) -> None:
    """Prefect's runner ends when its server stops answering (a restart, an upgrade): serve
    again once it answers, so the schedule, the trigger and the landing watch (which keeps its
    batches meanwhile) carry on. Ctrl-C still stops it."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from tasks.nightly.server import answers

    while True:
        try:
            serve_once()
            return
        except (httpx.TransportError, PrefectHTTPStatusError) as error:
            status = getattr(getattr(error, "response", None), "status_code", 503)
            if status < 500:
                raise
            console.print(f"[yellow]the Prefect server at {api_url} stopped answering "
                          f"({type(error).__name__}): serving again once it answers[/yellow]")
        while not answers(api_url):
            time.sleep(wait_s)


def landing_line(config) -> str:
    if config.trigger is None:
        return "landing trigger off (trigger: null): nights start on the schedule only"
    inbox = config.source.verified_inbox
    where = f"{config.source.images}" + (f" and {inbox} (verified XMLs)" if inbox else "")
    return (f"watching {where} for labelled images: {config.trigger.min_new_images} "
            f"or more, then {config.trigger.quiet_seconds:g} s quiet, start a night "
            "(the schedule stays as the fallback)")
