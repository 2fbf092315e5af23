"""`defectflow predict`, `queue`, `suspects` and `coco-eval`: their own module, so the CLI's
file stays a table of contents."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flows.summaries import config_or_exit, console


def folder_or_exit(images: Path) -> None:
    if not images.is_dir():
        console.print(f"[red]{images} is not a folder of images[/red]")
        raise typer.Exit(2)


def model_folder_or_exit(model: str, out: Path, config, home: str | None) -> Path:
    """The model folder `--model` names (a champion is downloaded into OUT/model/), or its
    error in red and exit code 2."""
    from flows.predict import model_folder
    from tasks.nightly.registry import RegistryUnreachable
    from tasks.predict.model import ModelNotFound

    try:
        return model_folder(model, out.resolve(), config, home)
    except ModelNotFound as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except RegistryUnreachable as exc:  # not "no champion": try again when it answers
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def predict(
    ctx: typer.Context,
    images: Annotated[Path, typer.Argument(help="folder of images (searched recursively)")],
    model: Annotated[str, typer.Option(help="a folder written by `train` (OUT or OUT/model), a "
                                       "model folder, or `champion` / `champion@NAME` from the "
                                       "registry of --config")],
    out: Annotated[Path, typer.Option(help="writes predictions.json, labelimg/, overlays/, "
                                      "predict_report.json")],
    threshold: Annotated[float | None, typer.Option(
        min=0, max=1, help="confidence a box needs to be drawn and written for LabelImg; "
        "default: the one the model's validation images chose (best F1), else 0.25")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per generation")] = 8,
    num_beams: Annotated[int, typer.Option(min=1, help="beams for generation")] = 1,
    config: Annotated[Path | None, typer.Option(help="dataset config: its registry (for "
                                                "`champion`), labels, tiling, image limits")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="replace the XMLs already in OUT/labelimg; without it an existing "
        "XML (your LabelImg corrections) is kept as it is and counted as kept")] = False,
) -> None:
    """Detect defects in new images: COCO predictions, LabelImg XMLs to correct, overlays."""
    from flows.predict import predict as predict_flow
    from flows.summaries import print_predict_summary

    loaded = config_or_exit(config) if config else None
    folder_or_exit(images)
    model_dir = model_folder_or_exit(model, out, loaded, ctx.obj)
    report = predict_flow(str(images.resolve()), str(model_dir), str(out.resolve()), threshold,
                          batch_size, num_beams, loaded, overwrite)
    print_predict_summary(report, out)


def queue(
    ctx: typer.Context,
    inbox: Annotated[Path, typer.Argument(help="folder of unlabelled images (and pre-labels)")],
    model: Annotated[str, typer.Option(help="as for `predict`: a model folder, or `champion` / "
                                       "`champion@NAME` from the registry of --config")],
    out: Annotated[Path, typer.Option(help="writes queue.csv and queue_gallery.png")],
    config: Annotated[Path | None, typer.Option(help="dataset config: its registry (for "
                                                "`champion`), labels, and its line's class "
                                                "counts (rare classes rank higher)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per generation")] = 8,
) -> None:
    """Which inbox images to label first: those the model is unsure of, whose mirror image it
    sees differently, or of rare classes; near-duplicates last. Images with a verified XML
    (LabelImg's "Verify Image") are done and left out."""

    from flows.predict import queue as queue_flow
    from tasks.core.home import resolve_home
    from tasks.predict.queue import class_counts_of

    loaded = config_or_exit(config) if config else None
    folder_or_exit(inbox)
    model_dir = model_folder_or_exit(model, out, loaded, ctx.obj)
    counts = class_counts_of(resolve_home(ctx.obj).line(loaded.name)) if loaded else None
    result = queue_flow(str(inbox.resolve()), str(model_dir), str(out.resolve()), loaded, counts,
                        batch_size)
    console.print(f"{result['queued']} images ranked ({result['verified']} verified already, "
                  f"{result['quarantined']} unreadable): {result['queue']}")
    for row in result["top"]:
        reasons = ", ".join(f"{k} {v}" for k, v in row["reasons"].items())
        console.print(f"  #{row['rank']:<3} {row['image']}  {row['score']:.3f}  {reasons}")
    if result["gallery"]:
        console.print(f"gallery: {result['gallery']}")


def suspects(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="the line's dataset config")],
    model: Annotated[str, typer.Option(help="as for `predict`: a model folder, or `champion` / "
                                       "`champion@NAME` from the config's registry")],
    dataset: Annotated[Path, typer.Option(help="a dataset made by `prepare` (OUT/dataset)")],
    out: Annotated[Path, typer.Option(help="writes suspects.json, images/, labels/, model/ and "
                                      "suspects_gallery.png")],
    batch_size: Annotated[int, typer.Option(min=1, help="images per generation")] = 8,
) -> None:
    """Labels the model disagrees with: a defect nobody drew (possible_missing), another class
    (possible_wrong_class), a label over nothing (possible_spurious), a loose box (loose_box).
    Open OUT/images in LabelImg with OUT/labels or OUT/model as the save folder."""
    from flows.predict import suspects as suspects_flow

    loaded = config_or_exit(config)
    if not (dataset / "train").is_dir() and not any(dataset.glob("**/*.parquet")):
        console.print(f"[red]{dataset} is not a dataset made by `prepare`[/red]")
        raise typer.Exit(2)
    model_dir = model_folder_or_exit(model, out, loaded, ctx.obj)
    result = suspects_flow(str(dataset.resolve()), str(model_dir), str(out.resolve()), loaded,
                           batch_size)
    for kind, per_class in result["counts"].items():
        console.print(f"{kind:22} {sum(per_class.values()):5}  "
                      + ", ".join(f"{label} {n}" for label, n in per_class.items()))
    console.print(f"{result['images_listed']} train/validation images with their two XMLs in "
                  f"{out} (the test split is only counted)")


IouType = Enum("IouType", {"bbox": "bbox", "segm": "segm"}, type=str)


def coco_eval(
    gt: Annotated[Path, typer.Argument(help="COCO ground truth JSON")],
    dt: Annotated[Path, typer.Argument(help="COCO detections JSON (a list of results)")],
    iou_type: Annotated[IouType, typer.Option(help="what the detections are")] = IouType.bbox,
) -> None:
    """Print COCOeval's 12 stats as JSON: {"stats": [...]} in COCOeval.stats order."""
    from tasks.scoring.coco import CocoInputError, coco_eval_files
    try:
        stats = coco_eval_files(gt, dt, iou_type.value)
    except CocoInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"stats": stats}))
