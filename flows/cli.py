"""`defectflow`: the command line. Each command runs a flow; nothing here does the work itself.

Prefect reads its settings when it is imported, so flows are imported inside the commands, after
`--home` has pointed PREFECT_HOME at the work folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tasks.config import ConfigError, load_config
from tasks.workdir import configure_environment, resolve_home

app = typer.Typer(
    help="defectflow: labelled defect images in, a better Florence-2 defect detector out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
_home: dict[str, str | None] = {"path": None}

ConfigArg = Annotated[Path, typer.Argument(help="dataset config, e.g. datasets_cfg/neu_det.yaml")]


@app.callback()
def main(
    home: Annotated[str | None, typer.Option(
        help="work folder for Prefect's database, cached results and the content store "
        "(env DEFECTFLOW_HOME; default ./.defectflow)")] = None,
) -> None:
    where = resolve_home(home)
    _home["path"] = str(where.root)
    configure_environment(where)


def _summary_table(title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    return table


def _add_image_rows(table: Table, report: dict) -> None:
    """Where the images went and what this run really had to decode (prepare's report)."""
    images, work = report["images"], report["work"]
    table.add_row("images", f"found {images['found']} = kept {images['kept']} + quarantined "
                  f"{images['quarantined']} + dropped grayscale {images['dropped_grayscale']}")
    if report["quarantine_reasons"]:
        table.add_row("quarantine", ", ".join(f"{k} {v}" for k, v in
                                              report["quarantine_reasons"].items()))
    table.add_row("work this run", f"decoded {work.get('images_decoded', 0)}, reused "
                  f"{work.get('images_reused', 0)} (content store), encoded "
                  f"{work.get('images_encoded', 0)}")


def _states_line(states: list[tuple[str, str]]) -> str:
    from tasks.run_history import state_counts

    return ", ".join(f"{k} {v}" for k, v in sorted(state_counts(states).items()))


def _config_or_exit(path: Path):
    try:
        return load_config(path)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def check(config: ConfigArg) -> None:
    """Validate a dataset config and print it with every default filled in."""
    cfg = _config_or_exit(config)
    console.print_json(cfg.model_dump_json())


@app.command()
def prepare(
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", help="writes OUT/dataset/ and OUT/prepare_report.json")],
) -> None:
    """Ingest, check, split, flip and publish a Florence-2 <OD> dataset."""
    _config_or_exit(config)
    report, states = run_prepare(config, out)
    print_prepare_summary(report, states, out)


def run_prepare(config: Path, out: Path) -> tuple[dict, list[tuple[str, str]]]:
    from flows.prepare import prepare as prepare_flow
    from tasks.run_history import task_run_states

    state = prepare_flow(str(config), str(out), _home["path"], return_state=True)
    report = state.result()
    return report, task_run_states(state.state_details.flow_run_id)


def print_prepare_summary(report: dict, states: list[tuple[str, str]], out: Path) -> None:
    images, boxes = report["images"], report["boxes"]
    table = _summary_table(f"prepare: {report['name']}")
    _add_image_rows(table, report)
    table.add_row("boxes", f"found {boxes['found']}, kept {boxes['kept']}, clipped "
                  f"{boxes['clipped']}, dropped {sum(boxes['dropped'].values())} "
                  f"{boxes['dropped'] or ''}")
    gray = report["grayscale"]
    table.add_row("grayscale", f"policy {gray['policy']}: detected {gray['detected']}, "
                  f"converted {gray['converted']}")
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in report["splits"].items())
                  + f"  (+ flipped copies: hflip {report['augmented']['hflip']}, "
                  f"vflip {report['augmented']['vflip']})")
    table.add_row("classes", ", ".join(f"{k} {v}" for k, v in report["classes"].items()) or "-")
    table.add_row("prefect tasks", _states_line(states))
    table.add_row("dataset", f"{report['dataset']['folder']}  rows {report['dataset']['rows']}")
    table.add_row("report", str(out / "prepare_report.json"))
    table.add_row("fingerprint", report["fingerprint"])
    console.print(table)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if images["kept"] == 0:
        console.print("[yellow]No image was kept: see the quarantine and grayscale lines above "
                      "(with `grayscale: drop`, a grayscale dataset keeps nothing; use convert).[/yellow]")


@app.command()
def train(
    config: ConfigArg,
    dataset: Annotated[Path, typer.Option(help="the dataset folder written by `prepare` (OUT/dataset)")],
    out: Annotated[Path, typer.Option(help="writes OUT/model/, OUT/loss_curve.png, OUT/train_summary.json")],
    model: Annotated[str | None, typer.Option(
        help="`tiny` (offline, random weights), a Hub id or a local folder; default: the config's")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after N optimizer steps")] = None,
) -> None:
    """Fine-tune Florence-2 with LoRA (or a ViT classifier) on a prepared dataset."""
    from flows.train import train as train_flow
    from tasks.models import ModelUnavailable

    _config_or_exit(config)
    state = train_flow(str(config), str(dataset.resolve()), str(out.resolve()), model, max_steps,
                       return_state=True)
    try:
        summary = state.result()
    except ModelUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    table = _summary_table("train")
    for key in ("kind", "checkpoint", "global_step", "resumed_from_step", "first_train_loss",
                "last_train_loss", "metric_for_best_model", "best_metric", "best_checkpoint",
                "model_dir"):
        table.add_row(key, str(summary.get(key)))
    table.add_row("loss curve", str(out / "loss_curve.png"))
    console.print(table)


@app.command()
def evaluate(
    config: ConfigArg,
    dataset: Annotated[Path, typer.Option(help="the dataset folder written by `prepare`")],
    model: Annotated[Path, typer.Option(help="the model folder written by `train` (OUT/model)")],
    out: Annotated[Path, typer.Option(help="writes metrics.json, gt.json, dt.json and PNGs here")],
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    num_beams: Annotated[int, typer.Option(help="beams for generation")] = 1,
) -> None:
    """COCO mAP (12 stats, per class), confusion matrix, PR curves and a prediction grid."""
    from flows.evaluate import evaluate as evaluate_flow

    cfg = _config_or_exit(config)
    metrics = evaluate_flow(str(config), str(dataset.resolve()), str(model.resolve()),
                            str(out.resolve()), split, num_beams)
    if cfg.model.kind == "vit":
        console.print(f"accuracy {metrics['accuracy']:.3f} on {metrics['n_images']} {split} images")
    else:
        coco = metrics["coco"] or {"map": float("nan"), "map50": float("nan")}
        console.print(f"mAP {coco['map']:.3f}  mAP50 {coco['map50']:.3f}  on {metrics['n_images']} "
                      f"{split} images; parse failures {metrics['parse_failures']}, "
                      f"unknown labels {metrics['unknown_labels']}")
    console.print(f"written: {out / 'metrics.json'} and PNGs in {out}")


@app.command("coco-eval")
def coco_eval(
    gt: Annotated[Path, typer.Argument(help="COCO ground truth JSON")],
    dt: Annotated[Path, typer.Argument(help="COCO detections JSON (a list of results)")],
    iou_type: Annotated[str, typer.Option(help="bbox | segm")] = "bbox",
) -> None:
    """Print COCOeval's 12 stats as JSON: {"stats": [...]} in COCOeval.stats order."""
    import json

    from tasks.evaluate import CocoInputError, coco_eval_files

    if iou_type not in ("bbox", "segm"):
        console.print("[red]--iou-type must be bbox or segm[/red]")
        raise typer.Exit(2)
    try:
        stats = coco_eval_files(gt, dt, iou_type)
    except CocoInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"stats": stats}))


@app.command("run")
def run_once(
    config: ConfigArg,
    work: Annotated[Path, typer.Option(help="work dir: prepared data, runs, champion copies")] = Path(
        "work/retrain"),
    max_steps: Annotated[int | None, typer.Option(help="override train.max_steps")] = None,
) -> None:
    """Run the nightly retrain flow once: what is new -> prepare -> train -> evaluate -> register."""
    _config_or_exit(config)
    result = run_retrain(config, work, max_steps)
    print_retrain_summary(result)
    if result["state"].is_failed():
        console.print("[red]failed: run it again to resume; finished steps come back Cached[/red]")
        raise typer.Exit(1)


def run_retrain(config: Path, work: Path, max_steps: int | None) -> dict:
    from flows.retrain import retrain
    from tasks.run_history import task_run_states

    state = retrain(str(config.resolve()), str(work.resolve()), _home["path"], max_steps,
                    return_state=True)
    states = task_run_states(state.state_details.flow_run_id)
    summary = state.result(raise_on_failure=True) if state.is_completed() else None
    return {"state": state, "summary": summary if isinstance(summary, dict) else None,
            "task_states": states}


def print_retrain_summary(result: dict) -> None:
    state, summary = result["state"], result["summary"]
    console.print(f"retrain: [bold]{state.name}[/bold] {state.message or ''}  prefect tasks: "
                  + _states_line(result["task_states"]))
    if not summary:
        return
    report, decision, version = summary["report"], summary["decision"], summary["version"]
    table = _summary_table("nightly retrain")
    _add_image_rows(table, report)
    table.add_row("trained", f"{summary['train']['global_step']} steps from "
                  f"{summary['train']['checkpoint']} (resumed from step "
                  f"{summary['train']['resumed_from_step']})")
    metric = decision["metric"]
    table.add_row(f"test {metric}", f"challenger v{version['version']}: "
                  f"{_fmt(decision['challenger_metric'])}   champion "
                  f"{'v' + str(decision['champion_version']) if decision['champion_version'] else '-'}: "
                  f"{_fmt(decision['champion_metric'])}")
    table.add_row("decision", decision["reason"])
    table.add_row("registry", f"{version['model_name']} v{version['version']} "
                  f"({'champion' if decision['promoted'] else 'challenger'}) at {summary['tracking_uri']}")
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def serve(
    config: ConfigArg,
    cron: Annotated[str, typer.Option(help="when to run (cron, server time zone)")] = "0 2 * * *",
    work: Annotated[Path, typer.Option(help="work dir of the served runs")] = Path("work/retrain"),
) -> None:
    """Serve the retrain flow as a Prefect deployment on a schedule (Ctrl-C stops)."""
    from flows.retrain import retrain

    cfg = _config_or_exit(config)
    console.print(f"serving retrain-{cfg.name} with cron {cron!r}; runs appear in the Prefect UI "
                  "(`make ui`). A run that finds another one active on the work dir exits cleanly.")
    retrain.serve(name=f"retrain-{cfg.name}", cron=cron, limit=1,
                  parameters={"config_path": str(config.resolve()), "work_dir": str(work.resolve()),
                              "home": _home["path"]})


@app.command()
def demo(
    work: Annotated[Path, typer.Option(help="folder for the generated data and the runs")] = Path(
        "work/demo"),
) -> None:
    """Generate a synthetic LabelImg defect dataset and run the nightly retrain twice, offline:
    once on the first batch, once after new images land (tiny Florence-2, no download)."""
    from tasks.demo import DEMO_FIRST_BATCH, DEMO_SECOND_BATCH, add_batch, demo_summary, write_demo_config

    work = work.resolve()
    config = write_demo_config(work)
    source = work / "source"
    if not (source / "annotations").exists():
        console.print(add_batch(source, DEMO_FIRST_BATCH, start=0, troubles=True))
    console.rule("night 1")
    first = run_retrain(config, work / "nightly", None)
    print_retrain_summary(first)
    console.print(add_batch(source, DEMO_SECOND_BATCH, start=DEMO_FIRST_BATCH, troubles=False))
    console.rule("night 2: new images landed")
    second = run_retrain(config, work / "nightly", None)
    print_retrain_summary(second)
    console.rule("summary")
    console.print(demo_summary(first, second, _home["path"]))


def main_entry() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main_entry()
