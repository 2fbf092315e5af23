"""demo = generate a first batch -> night 1 (retrain) -> new images land -> night 2 -> summary."""

from __future__ import annotations

from pathlib import Path

from flows.retrain import run_retrain
from flows.summaries import console, demo_summary, print_retrain_summary
from tasks.demo.scenario import DEMO_FIRST_BATCH, DEMO_SECOND_BATCH, add_batch, write_demo_config


def run_demo(work: Path, home: str | None) -> tuple[dict, dict]:
    """Two nightly retrains on generated data, fully offline (tiny Florence-2, no download)."""
    work = work.resolve()
    config = write_demo_config(work)
    source = work / "source"
    if not (source / "annotations").exists():
        console.print(add_batch(source, DEMO_FIRST_BATCH, start=0, troubles=True))
    console.rule("night 1")
    first = run_retrain(config, work / "nightly", home)
    print_retrain_summary(first)
    console.print(add_batch(source, DEMO_SECOND_BATCH, start=DEMO_FIRST_BATCH, troubles=False))
    console.rule("night 2: new images landed")
    second = run_retrain(config, work / "nightly", home)
    print_retrain_summary(second)
    console.rule("summary")
    console.print(demo_summary(first, second, home))
    return first, second
