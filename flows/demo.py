"""demo = generate a first batch and an inbox -> build the base (once) while the retrain deployment
is served -> night 1 (a run of it; the champion pre-labels the inbox) -> new images land and a
person verifies some pre-labels -> night 2 -> summary (console and demo_summary.json)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import typer

from flows.demo_server import followed, model_server, production_photos, send, served_line
from flows.deployment import landing_night, run_night, served
from flows.summaries import console, demo_summary, line_or_exit, print_retrain_summary
from tasks.core.home import prefect_server_in_use, resolve_home
from tasks.demo.scenario import (
    DEMO_FIRST_BATCH,
    DEMO_SECOND_BATCH,
    add_batch,
    add_inbox,
    demo_record,
    expectation_line,
    night1_expectation,
    untrained_nights,
    verify_in_labelimg,
    write_demo_config,
)
from tasks.training.pretrain import BASE_NAME, build_pretrained_base

DEFAULT_SEED = 5
T = TypeVar("T")


def build_base(home: str | None, seed: int = 0) -> Path:
    """The pretrained tiny Florence-2 base under the home, built once (about 3 minutes on 2 cores)."""
    folder = resolve_home(home).bases / BASE_NAME
    if not folder.is_dir():
        console.print(f"building the tiny Florence-2 base (pretrained on generic shapes) in {folder}")
    return build_pretrained_base(folder, seed=seed)


def in_background(work: Callable[[], T]) -> Callable[[], T]:
    """Start `work` on a daemon thread (Ctrl-C in the main thread still ends the program); the
    returned call waits for its result, or raises its error."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller, who decides
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="background", daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return result


def after_night_2(url: str, night: dict, photos: list[Path]) -> dict[str, list[dict]]:
    """The photos again once the server follows night 2's promotion (or at once, when the
    champion was kept)."""
    decision = (night["summary"] or {}).get("decision") or {}
    if decision.get("promoted"):
        seconds = followed(url, decision["challenger_version"])
        console.print(f"model server: serving v{decision['challenger_version']} "
                      + (f"{seconds} s after the promotion" if seconds is not None else
                         "[yellow]not yet after 120 s[/yellow]"))
    return {"after night 2": send(url, photos)}


def run_demo(work: Path, home: str | None, seed: int = DEFAULT_SEED, nights: int = 2) -> list[dict]:
    """Nightly retrains on generated data, fully offline: a LoRA adapter on the base. Exits 1
    (after writing its summary) when a night did not train: the demo is about what it learnt."""
    started = time.monotonic()
    work, where = work.resolve(), resolve_home(home)
    config = write_demo_config(work, where.bases / BASE_NAME, seed)
    nightly = line_or_exit(str(where.root), config, work / "nightly")  # the name `demo`, once a home
    source = work / "source"
    if not (source / "annotations").exists():
        console.print(add_batch(source, DEMO_FIRST_BATCH, start=0, troubles=True, seed=seed))
    if not (work / "inbox").is_dir():
        console.print(add_inbox(work, seed))
    # The base trains while Prefect's server (a new database on a first run) and serve start.
    base = in_background(lambda: build_base(home))
    with served(config, nightly, str(where.root)) as deployment:
        server = prefect_server_in_use(where)
        base()
        console.print(f"serving {deployment}: the nights are runs of it (Prefect UI: "
                      f"{server.removesuffix('/api')})")
        console.rule(f"night 1: a run of the {deployment} deployment")
        results = [run_night(deployment)]
        print_retrain_summary(results[0], server)
        champion = ((results[0]["summary"] or {}).get("decision") or {}).get("promoted")
        with model_server(config, str(where.root), work) if champion else nullcontext() as url:
            photos, answered = production_photos(work, seed), {}
            if url:
                answered["before night 2"] = send(url, photos)
                console.print(served_line("before night 2", answered["before night 2"]))
            if nights == 2:
                landed_from = datetime.now(timezone.utc)
                console.print(add_batch(source, DEMO_SECOND_BATCH, start=DEMO_FIRST_BATCH,
                                        troubles=False, seed=seed))
                console.print(verify_in_labelimg(work))
                console.rule("night 2: started by the landing trigger (serve saw the new images)")
                results.append(landing_night(deployment, landed_from))
                print_retrain_summary(results[1], server)
                if url:
                    answered.update(after_night_2(url, results[1], photos))
    console.rule("summary")
    console.print(demo_summary(results, home, server))
    for when, answers in answered.items():
        console.print(served_line(when, answers))
    record = {"seed": seed, "nights": [demo_record(result) for result in results],
              "served": answered, "seconds": round(time.monotonic() - started, 1)}
    record["night1_expected"] = night1_expectation(record["nights"][0])
    colour = "green" if record["night1_expected"]["reached"] else "yellow"
    console.print(f"[{colour}]{expectation_line(record['night1_expected'])}[/{colour}]")
    (work / "demo_summary.json").write_text(json.dumps(record, indent=1))
    console.print(f"written: {work / 'demo_summary.json'}")
    if missed := untrained_nights(record["nights"]):
        console.print(f"[red]the demo needs every night to train: {'; '.join(missed)}[/red]")
        raise typer.Exit(1)
    return results
