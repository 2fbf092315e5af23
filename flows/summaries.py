"""What a person reads at the end of a command: one-screen rich tables, built from the results."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tasks.core.config import ConfigError, DatasetConfig, load_config
from tasks.core.home import LineTaken, claim_line, resolve_home
from tasks.core.run_history import state_counts

console = Console()


def config_or_exit(path: Path) -> DatasetConfig:
    """The validated config, or its errors in red and exit code 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def line_or_exit(home: str, config_path: Path, work: Path | None) -> Path:
    """The config's work dir: `work`, else its line's own (`<home>/lines/<name>`). The config's
    name is claimed in the home; one another config file holds is refused in red, exit code 2."""
    try:
        line = claim_line(resolve_home(home), config_or_exit(config_path).name, config_path)
    except LineTaken as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return (work or line).resolve()


def started_from(train: dict) -> str:
    """What a training started from, in words that are true: the base, the champion's adapter
    trained further, and a checkpoint a killed run left (resumed at its step)."""
    base = Path(str(train.get("checkpoint") or "?")).name or str(train.get("checkpoint"))
    words = (f"the champion's LoRA adapter ({Path(train['adapter']).parent.name}) on {base}"
             if train.get("adapter") else f"{base}")
    if train.get("resumed_from_step"):
        words += f", resumed at step {train['resumed_from_step']} from a killed run's checkpoint"
    return words


def summary_table(title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a long path wraps whole, never cut in its middle
    return table


def add_image_rows(table: Table, report: dict) -> None:
    """Where the images went and what this run really had to decode (prepare's report)."""
    images, work = report["images"], report["work"]
    table.add_row("images", f"found {images['found']} = kept {images['kept']} + quarantined "
                  f"{images['quarantined']} + dropped grayscale {images['dropped_grayscale']}")
    if report["quarantine_reasons"]:
        table.add_row("quarantine", ", ".join(f"{k} {v}" for k, v in
                                              report["quarantine_reasons"].items()))
    if merged := report.get("annotations", {}).get("images_from_several_folders"):
        table.add_row("annotation passes", f"{merged} images drew boxes from several folders")
    if "inbox_read" in (annotations := report.get("annotations", {})):
        table.add_row("inbox", f"{annotations['inbox_read']} verified XMLs read, "
                      f"{annotations['inbox_waiting_verification']} waiting for a person to "
                      "verify (not read)")
    table.add_row("work this run", f"decoded {work.get('images_decoded', 0)}, reused "
                  f"{work.get('images_reused', 0)} (content store), encoded "
                  f"{work.get('images_encoded', 0)}")


def states_line(states: list[tuple[str, str]]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(state_counts(states).items()))


def print_prepare_summary(report: dict, states: list[tuple[str, str]], out: Path) -> None:
    images, boxes = report["images"], report["boxes"]
    table = summary_table(f"prepare: {report['name']}")
    add_image_rows(table, report)
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
    targets = report["targets"]
    table.add_row("targets", f"longest {targets['max_tokens']} tokens, p99 {targets['p99_tokens']} "
                  f"(budget {targets['budget']}; over it: {targets['over_budget']}; counted with "
                  f"{targets['counted_with']})")
    table.add_row("prefect tasks", states_line(states))
    table.add_row("dataset", f"{report['dataset']['folder']}  rows {report['dataset']['rows']}")
    table.add_row("report", str(out / "prepare_report.json"))
    table.add_row("fingerprint", report["fingerprint"])
    console.print(table)
    for collision in report["label_collisions"]:
        names = ", ".join(f"{name!r} ({count})" for name, count in collision["names"].items())
        fate = (f"merged into {collision['merged_into']!r}" if collision["merged_into"] else
                "kept as separate classes (merge_case_variants: true or label_map merges them)")
        console.print(f"[yellow]warning:[/yellow] class names {names} differ only by case or "
                      f"spacing: {fate}")
    if images["kept"] == 0:
        console.print("[yellow]No image was kept: see the quarantine and grayscale lines above "
                      "(with `grayscale: drop`, a grayscale dataset keeps nothing; use convert).[/yellow]")


def result_or_error(state, what: str) -> tuple[object, str | None, int]:
    """(a finished run's result, None, 0), or (None, one line that says why it failed, the exit
    code: 2 for a checkpoint that cannot be loaded, 1 otherwise). The run log has the rest."""
    from tasks.training.models import ModelUnavailable

    try:
        return state.result(), None, 0
    except ModelUnavailable as exc:
        return None, str(exc), 2
    except Exception as exc:  # noqa: BLE001 - one line for the person; details in the run log
        return None, f"{what} failed: {type(exc).__name__}: {exc}", 1


def print_train_summary(summary: dict, out: Path) -> None:
    table = summary_table("train")
    for key in ("kind", "checkpoint", "world_size", "global_batch", "global_step",
                "resumed_from_step", "first_train_loss",
                "last_train_loss", "selected_on", "metric_for_best_model", "best_metric",
                "best_checkpoint", "model_dir"):
        table.add_row(key, str(summary.get(key)))
    table.add_row("loss curve", str(out / "loss_curve.png"))
    console.print(table)


def print_evaluate_summary(metrics: dict, split: str, out: Path) -> None:
    if metrics["kind"] == "vit":
        console.print(f"accuracy {metrics['accuracy']:.3f} on {metrics['n_images']} {split} images")
    else:
        coco = metrics["coco"] or {"map": float("nan"), "map50": float("nan")}
        console.print(f"mAP {coco['map']:.3f}  mAP50 {coco['map50']:.3f}  on {metrics['n_images']} "
                      f"{split} images; parse failures {metrics['parse_failures']}, "
                      f"unknown labels {metrics['unknown_labels']}")
        if best := metrics.get("best_f1"):
            console.print(f"confidence threshold {metrics['threshold']:.3g} (the model's); on these "
                          f"images the best F1 {best['f1']:.3f} is at {best['threshold']:.3g}")
        if metrics.get("review", {}).get("images"):
            console.print(f"look first at {out / 'review'}: {metrics['review']['images']} images "
                          "with the most missed or spurious boxes")
    console.print(f"written: {out / 'metrics.json'} and PNGs in {out}")


def print_retrain_summary(result: dict, server: str | None = None) -> None:
    """`server`: the Prefect server the run went to, named on the first line."""
    state, summary = result["state"], result["summary"]
    console.print(f"retrain: [bold]{state.name}[/bold] {state.message or ''}  prefect tasks: "
                  + states_line(result["task_states"]) + (f"  (Prefect server: {server})"
                                                          if server else ""))
    if not summary:
        if state.is_completed():  # e.g. "no new images": a night that trained nothing says so
            console.print(f"[yellow]trained nothing: {state.message or 'no summary'}[/yellow]")
        return
    report, decision, version = summary["report"], summary["decision"], summary["version"]
    table = summary_table("nightly retrain")
    if started := summary.get("started_by"):
        from tasks.nightly.landing import started_by_line  # imports Prefect: not with the CLI

        table.add_row("started by", started_by_line(started).removeprefix("started by "))
    add_image_rows(table, report)
    if changes := summary.get("changes"):
        table.add_row("since last night", "first night" if changes["first_night"] else (
            f"+{changes['images_added']} images, -{changes['images_removed']}, "
            f"{changes['images_relabelled']} relabelled, {changes['images_replaced']} replaced; "
            f"test split {changes['test_images']['before']} -> {changes['test_images']['after']}"))
    table.add_row("trained", f"{summary['train']['global_step']} steps from "
                  f"{started_from(summary['train'])}; checkpoint chosen on "
                  f"{summary['train'].get('selected_on')}")
    metric = decision["metric"]
    table.add_row(f"test {metric}", f"challenger v{version['version']}: "
                  f"{_fmt(decision['challenger_metric'])}   champion "
                  f"{'v' + str(decision['champion_version']) if decision['champion_version'] else '-'}: "
                  f"{_fmt(decision['champion_metric'])}")
    table.add_row("decision", decision["reason"])
    table.add_row("registry", f"{version['model_name']} v{version['version']} "
                  f"({'champion' if decision['promoted'] else 'challenger'}) at {summary['tracking_uri']}")
    if prelabels := summary.get("prelabels"):
        table.add_row("pre-labels", f"{prelabels['written']} new XMLs ({prelabels['boxes']} boxes) "
                      f"in {prelabels['inbox']}; {prelabels['already_labelled']} images already "
                      "had one (kept)")
        queue = prelabels.get("queue") or {}
        table.add_row("labelling queue", f"{queue['queued']} images to label, best first: "
                      f"{queue['queue']}" if "queue" in queue else f"[red]{queue.get('error')}[/red]")
    if suspects := summary.get("suspects"):
        table.add_row("suspect labels", ", ".join(
            f"{kind} {sum(per_class.values())}" for kind, per_class in suspects["counts"].items())
            + f" among {suspects['images_checked']} new or changed images (last night's champion)"
            if "counts" in suspects else f"[red]{suspects.get('error')}[/red]")
    for name, outcome in (summary.get("followups") or {}).items():
        if outcome != "done":  # the night stands; the next night does it again
            table.add_row(f"[red]{name}[/red]", f"{outcome} (tried again next night)")
    if retention := summary.get("retention"):
        from tasks.nightly.retention import retention_line

        table.add_row("retention", f"[red]failed: {retention['error']}[/red] (the night stands)"
                      if "error" in retention else retention_line(retention))
    console.print(table)


def retention_rows(table: Table, report: dict) -> None:
    """What retention freed, kind by kind, and in all (`defectflow gc`)."""
    from rich.filesize import decimal

    from tasks.nightly.retention import freed_bytes

    for name, part in report.items():
        if isinstance(part, dict) and "bytes" in part:
            named = [f"v{n}" if isinstance(n, int) else Path(n).name for n in (
                part.get("collected") or part.get("versions_collected") or part.get("removed") or [])]
            what = f"{part['files']} files" if part.get("files") else ", ".join(named[:5]) + (
                f" and {len(named) - 5} more" if len(named) > 5 else "")
            table.add_row(name.replace("_", " "), decimal(part["bytes"]) + (f"  ({what})" if what else ""))
    if report.get("skipped"):
        table.add_row("[yellow]not collected[/yellow]", f"manifests and content store: {report['skipped']}")
    table.add_row("freed", decimal(freed_bytes(report)))


def print_predict_summary(report: dict, out: Path) -> None:
    """Images in and out, boxes per class at the threshold, where the files are."""
    table = summary_table(f"predict with {report['model']}")
    table.add_row("images", f"found {report['found']} = predicted {report['predicted']} + "
                  f"quarantined {report['quarantined']}")
    if report["quarantine_reasons"]:
        table.add_row("quarantine", ", ".join(f"{k} {v}" for k, v in
                                              report["quarantine_reasons"].items()))
    per_class = ", ".join(f"{k} {v}" for k, v in sorted(report["boxes_per_class"].items()))
    table.add_row(f"boxes >= {report['threshold']:.3g}", f"{report['boxes']}"
                  + (f" ({per_class})" if per_class else "")
                  + f"; {report['boxes_below_threshold']} below (kept in predictions.json)")
    problems = {k: report.get(k, 0) for k in ("truncated_outputs", "parse_failures",
                                             "unknown_labels")}
    if any(problems.values()):
        table.add_row("generation", ", ".join(f"{k} {v}" for k, v in problems.items()))
    kept = report["kept_existing"]
    table.add_row("labelimg XMLs", f"{report['xmls_written']} written, {kept} kept_existing"
                  + (" (were there: --overwrite replaces)" if kept else ""))
    table.add_row("wrote", f"{out}/predictions.json (COCO), {out}/labelimg/ (open in LabelImg), "
                  f"{out}/overlays/, {out}/predict_report.json")
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def demo_summary(results: list[dict], home: str | None, server: str | None = None) -> str:
    """The demo's closing lines: each night in one line, then where to look (`server`: the
    Prefect server its nights went to)."""
    lines = []
    for number, result in enumerate(results, start=1):
        night = f"night {number}"
        summary = result["summary"]
        states = [s for _, s in result["task_states"]]
        cached = states.count("Cached")
        if not summary:
            lines.append(f"{night}: trained nothing ({result['state'].name}: "
                         f"{result['state'].message or 'no summary'})")
            continue
        report, decision, version = summary["report"], summary["decision"], summary["version"]
        metric = decision["metric"]
        lines.append(
            f"{night}: {report['images']['found']} images found, {report['images']['kept']} kept, "
            f"{report['images']['quarantined']} quarantined ({', '.join(report['quarantine_reasons'])}),"
            f" {report['work'].get('images_decoded', 0)} decoded, {report['work'].get('images_reused', 0)}"
            f" reused; {cached}/{len(states)} Prefect tasks Cached; trained {summary['train']['global_step']}"
            f" steps; test {metric}: challenger v{version['version']} "
            f"{decision['challenger_metric']:.3f} vs champion "
            + ("-" if decision["champion_metric"] is None else f"{decision['champion_metric']:.3f}")
            + f" -> {'promoted to champion' if decision['promoted'] else 'champion kept'}")
    from tasks.nightly.registry import ui_command  # imports Prefect: not before --home is read

    final = next((r["summary"] for r in reversed(results) if r["summary"]), None)
    if final:
        mlflow_dir = Path(home or ".defectflow") / "mlflow"
        lines += ["", "where to look:",
                  "  Prefect UI (flow runs, task states, artifacts):  make ui (`defectflow server "
                  f"start`)  ->  http://127.0.0.1:4200  (the nights ran on {server or '-'})",
                  f"  MLflow registry:  {ui_command(final['tracking_uri'], mlflow_dir)}",
                  f"  metrics and plots:  {Path(final['train']['model_dir']).parent / 'eval'}"]
    return "\n".join(lines)


def print_server(home: str | None) -> None:
    """The Prefect server whose history holds the command's runs (the summary's last line)."""
    from tasks.core.home import prefect_server_in_use, resolve_home

    console.print(f"Prefect server: {prefect_server_in_use(resolve_home(home))}")
