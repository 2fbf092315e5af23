"""`defectflow predict`: its own module, so the CLI's file stays a table of contents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.summaries import config_or_exit, console


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
    from flows.predict import model_folder
    from flows.predict import predict as predict_flow
    from flows.summaries import print_predict_summary
    from tasks.predict.model import ModelNotFound

    loaded = config_or_exit(config) if config else None
    if not images.is_dir():
        console.print(f"[red]{images} is not a folder of images[/red]")
        raise typer.Exit(2)
    try:
        model_dir = model_folder(model, out.resolve(), loaded, ctx.obj)
    except ModelNotFound as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    report = predict_flow(str(images.resolve()), str(model_dir), str(out.resolve()), threshold,
                          batch_size, num_beams, loaded, overwrite)
    print_predict_summary(report, out)
