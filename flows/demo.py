"""demo = build the base (once) -> generate a first batch -> serve the retrain deployment ->
night 1 (a run of it) -> new images land -> night 2 -> summary (console and demo_summary.json)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flows.deployment import run_night, served
from flows.summaries import console, demo_summary, print_retrain_summary
from tasks.core.home import resolve_home
from tasks.demo.scenario import (
    DEMO_FIRST_BATCH,
    DEMO_SECOND_BATCH,
    add_batch,
    demo_record,
    write_demo_config,
)
from tasks.training.pretrain import BASE_NAME, build_pretrained_base

DEFAULT_SEED = 5


def build_base(home: str | None) -> Path:
    """The pretrained tiny Florence-2 base under the home, built once (about 2 minutes)."""
    folder = resolve_home(home).bases / BASE_NAME
    if not folder.is_dir():
        console.print(f"building the tiny Florence-2 base (pretrained on generic shapes) in {folder}")
    return build_pretrained_base(folder)


def run_demo(work: Path, home: str | None, seed: int = DEFAULT_SEED, nights: int = 2) -> list[dict]:
    """Nightly retrains on generated data, fully offline: a LoRA adapter on the base."""
    started = time.monotonic()
    work = work.resolve()
    config = write_demo_config(work, build_base(home), seed)
    source = work / "source"
    if not (source / "annotations").exists():
        console.print(add_batch(source, DEMO_FIRST_BATCH, start=0, troubles=True, seed=seed))
    with served(config, work / "nightly", str(resolve_home(home).root)) as deployment:
        console.rule(f"night 1: a run of the {deployment} deployment")
        results = [run_night(deployment)]
        print_retrain_summary(results[0])
        if nights == 2:
            console.print(add_batch(source, DEMO_SECOND_BATCH, start=DEMO_FIRST_BATCH,
                                    troubles=False, seed=seed))
            console.rule("night 2: new images landed")
            results.append(run_night(deployment))
            print_retrain_summary(results[1])
    console.rule("summary")
    console.print(demo_summary(results, home))
    record = {"seed": seed, "nights": [demo_record(result) for result in results],
              "seconds": round(time.monotonic() - started, 1)}
    (work / "demo_summary.json").write_text(json.dumps(record, indent=1))
    console.print(f"written: {work / 'demo_summary.json'}")
    return results
