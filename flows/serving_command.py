"""`defectflow serve-model` and `rollback`: the line's champion over HTTP, following the
registry, and the way back to the version before; a module of their own so the CLI's file stays
a table of contents."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer

from flows.summaries import config_or_exit, console, line_or_exit

ConfigArg = Annotated[Path, typer.Argument(help="dataset config, e.g. datasets_cfg/neu_det.yaml")]
WorkOption = Annotated[Path | None, typer.Option(
    help="work dir (default `<home>/lines/<config name>`)")]


def registry_of(config, home: str):
    from tasks.core.home import resolve_home
    from tasks.nightly.registry import RegistryTarget, embedded_tracking_uri

    uri = config.registry.tracking_uri or embedded_tracking_uri(resolve_home(home).mlflow)
    return RegistryTarget(tracking_uri=uri, model_name=config.model_name)


def serve_model(
    ctx: typer.Context,
    config: ConfigArg,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    version: Annotated[int | None, typer.Option(
        "--version", min=1, help="serve this registry version instead of following the "
        "champion alias (default: the config's serving.pin)")] = None,
    replica: Annotated[str | None, typer.Option(
        help="this server's name among the line's replicas (its monitoring and feedback files); "
        "default: the host name (two servers on one machine need a name each)")] = None,
    work: WorkOption = None,
) -> None:
    """Serve the line's champion over HTTP (POST /predict, GET /health /model /metrics),
    following the registry: a promotion or a rollback is served within serving.poll_seconds
    (at once through Prefect's event when its server is up). Ctrl-C stops."""
    import uvicorn

    from tasks.core.home import home_server_url, resolve_home
    from tasks.nightly.alerts import send_alert
    from tasks.nightly.champion_alias import champion_resource_id
    from tasks.serving.app import ModelServer, make_app
    from tasks.serving.feedback import FeedbackSampler
    from tasks.serving.follower import ModelFollower, watch_champion_events
    from tasks.serving.monitoring import Monitor

    loaded = config_or_exit(config)
    line = line_or_exit(ctx.obj, config, work)
    registry = registry_of(loaded, ctx.obj)
    replica = replica or socket.gethostname()
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # a locked registry
    # is said once by the follower, not as MLflow's traceback at every poll
    monitor = Monitor(line / "monitoring", replica)

    def alert(title: str, body: str) -> None:
        monitor.alert(title, body)
        console.print(f"[red]{title}[/red]: {body}")
        notify = loaded.notify
        if notify.target and "serving" in notify.on and not send_alert(notify.target, title, body):
            console.print("[yellow]the alert could not be sent[/yellow]")

    follower = ModelFollower(registry, loaded, line / "serving" / replica,
                             version or loaded.serving.pin, alert)
    feedback = None
    if loaded.prelabel is not None and loaded.serving.feedback is not None:
        feedback = FeedbackSampler(loaded.prelabel.inbox, line / "feedback", replica,
                                   loaded.serving.feedback)
    server = ModelServer(loaded, follower, monitor, feedback)
    threading.Thread(target=follower.run, args=(loaded.serving.poll_seconds, console.print),
                     daemon=True, name="follower").start()
    prefect = os.environ.get("PREFECT_API_URL") or home_server_url(resolve_home(ctx.obj))
    if prefect:
        os.environ["PREFECT_API_URL"] = prefect
        threading.Thread(target=watch_champion_events,
                         args=(follower, champion_resource_id(registry)), daemon=True,
                         name="champion-events").start()
    console.print(f"serving {registry.model_name} "
                  f"({f'v{follower.pin}, pinned' if follower.pin else 'its champion alias'}) "
                  f"from {registry.tracking_uri} at http://{host}:{port} (replica {replica}); "
                  f"champion events: {prefect or 'no Prefect server up, polling only'}")
    try:
        uvicorn.run(make_app(server), host=host, port=port, log_level="warning")
    finally:
        follower.stopped.set()
        follower.wake.set()


def rollback(
    ctx: typer.Context,
    config: ConfigArg,
    to: Annotated[int | None, typer.Option(
        "--to", min=1, help="the version to serve again (default: the one before, the "
        "`previous` alias)")] = None,
    work: WorkOption = None,
) -> None:
    """Move the champion alias back; every model server of the line follows it. Recorded in the
    version's `rollback` tag (a night's promotion decision is left as it was)."""
    from tasks.nightly.champion_alias import RollbackRefused
    from tasks.nightly.champion_alias import rollback as move_back
    from tasks.nightly.registry import RegistryUnreachable

    loaded = config_or_exit(config)
    line = line_or_exit(ctx.obj, config, work)
    registry = registry_of(loaded, ctx.obj)
    try:
        record = move_back(registry, line, to, by=getpass.getuser())
    except RollbackRefused as exc:
        console.print(f"[red]rollback refused: {exc}[/red]")
        raise typer.Exit(2) from None
    except RegistryUnreachable as exc:  # nothing moved: try again when it answers
        console.print(f"[red]{exc}: nothing moved[/red]")
        raise typer.Exit(1) from None
    console.print(f"{registry.model_name}: champion v{record['from_version']} -> "
                  f"v{record['to_version']} (v{record['from_version']} is `previous` now)")
