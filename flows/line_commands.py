"""`defectflow gc`, `status`, `watch` and `train-node`: a line's upkeep, its state for a person
or a monitor, its landing watch without `serve` (for a retrain deployment on a work pool,
`prefect.yaml`: each batch of labelled images landing in the source becomes a
`defectflow.images.landed` event and the deployment's trigger starts a night), and another
machine's part of its distributed training (`train.distributed.nnodes > 1`: the flow runs on
node 0, every other machine runs `train-node` with the home at the same path as on node 0), in
a module of their own so the CLI's file stays a table of contents."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from flows.summaries import config_or_exit, console, summary_table
from tasks.core.home import resolve_home

WorkOption = Annotated[Path | None, typer.Option(
    help="work dir (default `<home>/lines/<config name>`)")]


def gc(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(
        help="dataset config: its line's runs, registry and work dir too; without it, only "
        "the home's shared manifests, content store and leftovers")] = None,
    work: WorkOption = None,
) -> None:
    """Collect what retention lets go: checkpoints of old runs, model files of old versions,
    champion copies, unused manifests and content-store entries, crash leftovers."""
    from flows.summaries import retention_rows
    from tasks.nightly.promotion import work_dir_lock
    from tasks.nightly.registry import RegistryTarget, RegistryUnreachable
    from tasks.nightly.retention import references_or_none, retention_step
    from tasks.nightly.status import registry_uri

    home, cutoff = resolve_home(ctx.obj), time.time()  # what runs write from now on stays
    loaded = config_or_exit(config) if config else None
    line = (work or home.line(loaded.name)).resolve() if loaded else None
    if line is None or not line.is_dir():
        if loaded is not None:
            console.print(f"[yellow]{line} does not exist: only the home is collected[/yellow]")
        report = retention_step(None, None, home, None, cutoff, references_or_none(None, home))
    else:
        uri = registry_uri(loaded, home)
        registry = RegistryTarget(tracking_uri=uri, model_name=loaded.model_name) if uri else None
        with work_dir_lock(line) as ours:
            if not ours:
                console.print(f"[red]a retrain holds {line}: run gc again when it is done[/red]")
                raise typer.Exit(1)
            try:
                report = retention_step(loaded, line, home, registry, cutoff,
                                        references_or_none(line, home))
            except RegistryUnreachable as exc:  # nothing was collected on a guess
                console.print(f"[red]{exc}: nothing collected; run gc again later[/red]")
                raise typer.Exit(1) from None
    table = summary_table(f"gc: {loaded.name if loaded else home.root}")
    retention_rows(table, report)
    console.print(table)


def status(
    ctx: typer.Context,
    configs: Annotated[list[Path] | None, typer.Argument(
        help="dataset configs; default: every line of the home")] = None,
    work: WorkOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Each line's champion, last night, next scheduled run, images and disk use; exit code 1
    when a line's last night failed or its registry is unreachable (for cron or a monitoring
    check)."""
    import json

    from tasks.nightly.status import home_lines, line_status

    home = resolve_home(ctx.obj)
    paths = configs or home_lines(home)
    if work is not None and len(paths) != 1:
        console.print("[red]--work names one line's work dir: give exactly one config[/red]")
        raise typer.Exit(2)
    if not paths:
        console.print(f"no line has run in {home.root} yet: name a config")
    statuses = []
    for path in paths:
        config = config_or_exit(path)
        statuses.append(line_status(config, path, home, work.resolve() if work else None))
    if as_json:
        typer.echo(json.dumps(statuses, indent=1))
    else:
        for found in statuses:
            print_status(found)
    if any(found["failed"] for found in statuses):
        raise typer.Exit(1)


def print_status(found: dict) -> None:
    from rich.filesize import decimal
    from rich.markup import escape

    table = summary_table(f"status: {found['name']}")
    champion = found["champion"]
    table.add_row("champion", "none yet" if champion is None else
                  f"[red]{escape(champion['unreachable'])}[/red]" if "unreachable" in champion else (
        f"v{champion['version']}  {champion['metric']} "
        f"{'-' if champion['value'] is None else format(champion['value'], '.4f')}  "
        f"since {champion['since']}"))
    last = found["last_night"]
    if last is None:
        table.add_row("last night", "none yet")
    else:
        colour = "red" if last["failed"] else "green" if last["state"] == "Completed" else "yellow"
        table.add_row("last night", f"[{colour}]{last['state']}[/{colour}] {last['at']} "
                      f"({last['flow_run']}){': ' + last['message'] if last['message'] else ''}")
    if running := found["running"]:
        table.add_row("running now", f"{running['state']} since {running['at']} ({running['flow_run']})")
    deployment = found["deployment"]
    table.add_row("next run", f"{found['next_run']['at']} ({deployment['name']})" if found["next_run"]
                  else "not served (no deployment)" if deployment is None
                  else f"none scheduled ({deployment['name']}"
                  + (", paused)" if deployment["paused"] else ")"))
    images = found["images"]
    table.add_row("images", "no prepare yet" if images is None else (
        f"found {images['found']} = kept {images['kept']} + quarantined {images['quarantined']} "
        f"+ dropped grayscale {images['dropped_grayscale']} (prepared {images['at']})"))
    table.add_row("disk", f"home {decimal(found['disk']['home'])}, work dir "
                  f"{decimal(found['disk']['work'])} ({found['work']})")
    console.print(table)


def watch(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="dataset config, e.g. datasets_cfg/neu_det.yaml")],
    port: Annotated[int, typer.Option(help="port of the server watch starts when none is up")] = 4200,
) -> None:
    """Send a Prefect event for each batch of labelled images landing in the config's source
    (a deployment on a work pool starts a night on it; `serve` watches by itself); Ctrl-C stops."""
    from flows.landing import watch_landings
    from flows.retrain import retrain
    from flows.serve import landing_line
    from tasks.core.home import resolve_home
    from tasks.nightly.server import prefect_server
    from tasks.nightly.status import deployment_name

    dataset = config_or_exit(config)
    if dataset.trigger is None:
        console.print(f"[red]{config}: trigger is null: nothing to watch for[/red]")
        raise typer.Exit(2)
    deployment = f"{retrain.name}/{deployment_name(dataset)}"
    home = resolve_home(ctx.obj)
    with prefect_server(home.prefect, port=port) as api_url:
        console.print(f"{landing_line(dataset)}; events to {api_url}, for the deployment "
                      f"{deployment}'s trigger. Ctrl-C stops.")
        watch_landings(dataset, deployment, threading.Event(), work=home.line(dataset.name))


def train_node(
    config: Annotated[Path, typer.Argument(help="the line's dataset config (the same file as on node 0)")],
    node_rank: Annotated[int, typer.Option(min=1, help="this machine's node rank: 1 .. nnodes-1")],
    trainings: Annotated[int, typer.Option(min=0, help="trainings to join; 0: join one after "
                                           "another until stopped")] = 1,
) -> None:
    """Join the training node 0's night starts: torchrun with this node's rank at the config's
    rdzv_endpoint, waiting up to join_timeout_minutes for the others. Node 0 logs the training;
    this prints its own ranks' console."""
    from tasks.training.distributed import RanksFailed, join_training

    distributed = config_or_exit(config).train.distributed
    if distributed is None or distributed.nnodes < 2:
        console.print(f"[red]{config}: train.distributed.nnodes is not > 1: nothing to join[/red]")
        raise typer.Exit(2)
    if node_rank >= distributed.nnodes:
        console.print(f"[red]--node-rank {node_rank}: the config has {distributed.nnodes} nodes "
                      f"(ranks 0 .. {distributed.nnodes - 1}; 0 is the flow's)[/red]")
        raise typer.Exit(2)
    joined = 0
    while trainings == 0 or joined < trainings:
        console.print(f"node {node_rank}: waiting for node 0 at {distributed.rdzv_endpoint} "
                      f"(up to {distributed.join_timeout_minutes:g} min)")
        try:
            join_training(distributed, node_rank, lambda level, message: console.print(message))
        except RanksFailed as exc:
            console.print(f"[red]{exc}[/red]")
            if trainings:
                raise typer.Exit(1) from None
        else:
            console.print(f"node {node_rank}: the training ended")
        joined += 1
