"""`defectflow init FOLDER`: a config written from a person's own folder, so the tour starts from
their data (a module of its own: the CLI's file stays a table of contents)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from flows.summaries import config_or_exit, console


def init(
    folder: Annotated[Path, typer.Argument(help="your images and annotations (searched "
                                           "recursively)")],
    out: Annotated[Path | None, typer.Option(
        help="the config to write (default `datasets_cfg/<folder name>.yaml`)")] = None,
    name: Annotated[str | None, typer.Option(help="the line's name (default: the folder's)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace a config already there")] = False,
) -> None:
    """Write a config for a folder of labelled images: the format found (Pascal VOC, YOLO with
    classes.txt, COCO), the classes, the grayscale share; what was guessed is said in its
    comments. It is checked as `check` does before it is kept."""
    from tasks.dataset.detect import NothingToDetect, config_text, detect_layout

    if not folder.is_dir():
        console.print(f"[red]{folder} is not a folder[/red]")
        raise typer.Exit(2)
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name).strip("_.-") or "line"
    out = out or Path("datasets_cfg") / f"{name}.yaml"
    if out.exists() and not force:
        console.print(f"[red]{out} exists: give another --out, or --force to replace it[/red]")
        raise typer.Exit(2)
    try:
        detected = detect_layout(folder)
    except NothingToDetect as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(config_text(name, detected, out.parent))
    config_or_exit(out)  # what check says of it: a config init writes must load
    console.print(f"wrote {out}: {detected.format}, {detected.images_found} images, "
                  f"{len(detected.classes)} classes ({', '.join(detected.classes[:8])}"
                  f"{', ...' if len(detected.classes) > 8 else ''}), "
                  f"{detected.grayscale_share:.0%} grayscale")
    console.print(f"next: defectflow prepare {out} --out out/{name}")
