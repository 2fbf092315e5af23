"""`defectflow server start|stop|status`: the home's lasting Prefect server, detached, shared by
every line of the home (`serve`, `run`, `demo` find it through `<home>/prefect/server.json`)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.summaries import console
from tasks.core.home import resolve_home
from tasks.nightly.server import (
    DEFAULT_PORT,
    ServerUnavailable,
    home_server_status,
    start_home_server,
    stop_home_server,
)

server_app = typer.Typer(help="The home's lasting Prefect server (every line of the home uses it).",
                         no_args_is_help=True)


@server_app.command("start")
def start(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="its port (another free one when this is taken)")] = DEFAULT_PORT,
) -> None:
    """Start the home's Prefect server in the background, on the home's database; it outlives
    this command and any `serve` (stop it with `defectflow server stop`)."""
    home = resolve_home(ctx.obj)
    try:
        record = start_home_server(home, port)
    except ServerUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{'started' if record['started'] else 'already up:'} the Prefect server of "
                  f"{home.root} at {record['url']} (pid {record['pid']}); the UI: "
                  f"{record['url'].removesuffix('/api')}; log: {record['log']}")


@server_app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the home's Prefect server."""
    home = resolve_home(ctx.obj)
    stopped = stop_home_server(home)
    console.print(f"stopped the Prefect server of {home.root}" if stopped
                  else f"no Prefect server of {home.root} was up")


@server_app.command("status")
def status(ctx: typer.Context) -> None:
    """Whether the home's Prefect server is up (exit code 0) or not (1), and where."""
    home = resolve_home(ctx.obj)
    found = home_server_status(home)
    if not found["up"]:
        console.print(f"no Prefect server of {home.root} is up (log: {found['log']})")
        raise typer.Exit(1)
    console.print(f"up: {found['url']} (pid {found['pid']}), the Prefect server of {home.root}; "
                  f"log: {found['log']}")
