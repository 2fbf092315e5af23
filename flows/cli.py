"""`defectflow`: the command line. Each command runs a flow and prints its summary. Flows are
imported inside the commands, after `--home` has pointed PREFECT_HOME at the work folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.init_command import init
from flows.line_commands import gc, status, train_node, watch
from flows.predict_command import coco_eval, predict, queue, suspects
from flows.server_command import server_app
from flows.serving_command import rollback, serve_model
from flows.summaries import config_or_exit, console, line_or_exit, print_server
from tasks.core.home import configure_environment, prefect_server_in_use, resolve_home
from tasks.images.workers import allow as allow_image_workers

# The help's panels, in the order of the tour: prepare and train, the nights, labelling, serving.
PIPELINE, NIGHTLY, LABELLING, SERVING, TOOLS = (
    "Pipeline", "Every night", "Labelling", "Serving the champion", "Tools")
app = typer.Typer(
    help="defectflow: labelled defect images in, a better Florence-2 defect detector out.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # a docstring's lines are one paragraph: the help wraps it
)
ConfigArg = Annotated[Path, typer.Argument(help="dataset config, e.g. datasets_cfg/neu_det.yaml")]
WorkOption = Annotated[Path | None, typer.Option(help="work dir (default `<home>/lines/<config name>`)")]


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[str | None, typer.Option(
        help="work folder for Prefect's database, cached results and the content store "
        "(env DEFECTFLOW_HOME; default ./.defectflow)")] = None,
) -> None:
    configure_environment(where := resolve_home(home))
    ctx.obj = str(where.root)  # the home every command passes to its flow
    allow_image_workers()  # this entry point keeps its work under `if __name__ == "__main__"`


@app.command(rich_help_panel=PIPELINE)
def check(config: ConfigArg) -> None:
    """Validate a dataset config and print it with every default filled in."""
    console.print_json(config_or_exit(config).model_dump_json())


@app.command(rich_help_panel=PIPELINE)
def prepare(
    ctx: typer.Context,
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", help="writes OUT/dataset/ and OUT/prepare_report.json")],
) -> None:
    """Ingest, check, split, flip and publish a Florence-2 `<OD>` dataset."""
    from flows.prepare import SourceUnreadable, run_prepare
    from flows.summaries import print_prepare_summary

    config_or_exit(config)
    try:
        report, states = run_prepare(config, out, ctx.obj)
    except SourceUnreadable as exc:
        console.print(f"[red]error: {exc}[/red]")
        raise typer.Exit(2) from None
    print_prepare_summary(report, states, out)
    print_server(ctx.obj)


@app.command(rich_help_panel=PIPELINE)
def train(
    ctx: typer.Context,
    config: ConfigArg,
    dataset: Annotated[Path, typer.Option(help="the dataset folder written by `prepare` (OUT/dataset)")],
    out: Annotated[Path, typer.Option(help="writes OUT/model/, OUT/loss_curve.png, OUT/train_summary.json")],
    model: Annotated[str | None, typer.Option(
        help="`tiny` (offline, random weights), a Hub id or a local folder; default: the config's")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after N optimizer steps")] = None,
) -> None:
    """Fine-tune Florence-2 with LoRA (or a ViT classifier) on a prepared dataset."""
    from flows.summaries import print_train_summary, result_or_error
    from flows.train import train as train_flow

    config_or_exit(config)
    summary, error, code = result_or_error(train_flow(str(config), str(dataset.resolve()), str(out.resolve()),
                                                      model, max_steps, return_state=True), "train")
    if error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(code)
    print_train_summary(summary, out)
    print_server(ctx.obj)


@app.command(rich_help_panel=PIPELINE)
def evaluate(
    ctx: typer.Context,
    config: ConfigArg,
    dataset: Annotated[Path, typer.Option(help="the dataset folder written by `prepare`")],
    model: Annotated[Path, typer.Option(help="the model folder written by `train` (OUT/model)")],
    out: Annotated[Path, typer.Option(help="writes metrics.json, gt.json, dt.json and PNGs here")],
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    num_beams: Annotated[int | None, typer.Option(help="beams for generation; default: the config's")] = None,
) -> None:
    """COCO mAP (12 stats, per class), confusion matrix, PR curves and a prediction grid."""
    from flows.evaluate import evaluate as evaluate_flow
    from flows.summaries import print_evaluate_summary

    config_or_exit(config)
    print_evaluate_summary(evaluate_flow(str(config), str(dataset.resolve()), str(model.resolve()),
                                         str(out.resolve()), split, num_beams), split, out)
    print_server(ctx.obj)


@app.command("run", rich_help_panel=NIGHTLY)
def run_once(
    ctx: typer.Context,
    config: ConfigArg,
    work: WorkOption = None,
    max_steps: Annotated[int | None, typer.Option(help="override train.max_steps")] = None,
) -> None:
    """Run the nightly retrain flow once: what is new -> prepare -> train -> evaluate -> register."""
    from flows.retrain import run_retrain
    from flows.summaries import print_retrain_summary

    work = line_or_exit(ctx.obj, config, work)
    result = run_retrain(config, work, ctx.obj, max_steps)
    print_retrain_summary(result, prefect_server_in_use(resolve_home(ctx.obj)))
    if result["state"].is_failed():
        console.print("[red]failed: run it again to resume; finished steps come back Cached[/red]")
        raise typer.Exit(1)


@app.command(rich_help_panel=NIGHTLY)
def serve(
    ctx: typer.Context,
    config: ConfigArg,
    cron: Annotated[str | None, typer.Option(help="override the config's schedule.cron")] = None,
    work: WorkOption = None,
    port: Annotated[int, typer.Option(help="port of the server serve starts when none is up")] = 4200,
    quiet: Annotated[bool, typer.Option(help="print nothing when serving starts")] = False,
) -> None:
    """Serve the retrain deployment on the config's schedule against a lasting Prefect server
    (PREFECT_API_URL's, the home's `server start`ed one, or one started here); Ctrl-C stops."""
    from flows.serve import serve_retrain

    work = line_or_exit(ctx.obj, config, work)
    serve_retrain(config, work, ctx.obj, cron, port, announce=not quiet)


@app.command(rich_help_panel=PIPELINE)
def demo(
    ctx: typer.Context,
    work: Annotated[Path, typer.Option(help="folder for the generated data, the runs")] = Path("work/demo"),
    seed: Annotated[int, typer.Option(help="seed of the generated data and the training")] = 5,
    nights: Annotated[int, typer.Option(min=1, max=2, help="2: new images land before night 2")] = 2,
) -> None:
    """Generate synthetic LabelImg defects and run the nightly retrain on them, offline (LoRA on
    a tiny pretrained base): night 1 on a first batch, night 2 after new images land."""
    from flows.demo import run_demo

    run_demo(work, ctx.obj, seed, nights)


def build_base(
    ctx: typer.Context,
    seed: Annotated[int, typer.Option(help="random weights and shapes (a built base is kept)")] = 0,
) -> None:
    """Pretrain the tiny offline Florence-2 base on generic shapes (once; the demo uses it)."""
    from flows.demo import build_base as build

    console.print(f"base checkpoint: {build(ctx.obj, seed)}")


for panel, commands in ((PIPELINE, (init,)), (NIGHTLY, (status, gc, watch, train_node)),
                        (LABELLING, (predict, queue, suspects)),
                        (SERVING, (serve_model, rollback))):
    for command in commands:
        app.command(rich_help_panel=panel)(command)  # typer names serve_model `serve-model`
app.add_typer(server_app, name="server", rich_help_panel=NIGHTLY)
app.command("build-base", rich_help_panel=TOOLS)(build_base)
app.command("coco-eval", rich_help_panel=TOOLS)(coco_eval)
