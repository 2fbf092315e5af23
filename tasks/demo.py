"""`defectflow demo`: synthetic data, a config sized for 2 CPU cores, and the closing summary."""

from __future__ import annotations

from pathlib import Path

from tasks.registry import ui_command
from tasks.sample_data import generate

DEMO_FIRST_BATCH = 800
DEMO_SECOND_BATCH = 200
DEFECT_EXTENT = (1 / 3, 1 / 2)  # defect sides as a fraction of the 128 px image
DEMO_CONFIG = """# Written by `defectflow demo`: synthetic LabelImg-style defects, tiny offline Florence-2.
name: demo
source: {{format: voc, images: {images}, annotations: {annotations}}}
grayscale: convert
augment: {{hflip: true, vflip: false}}
split: {{train: 0.7, validation: 0.1, test: 0.2}}
labels: [patch, scratch, spot]
model:
  kind: florence2
  checkpoint: tiny      # built offline: the real architecture at toy size, random weights
  lora: null            # from random weights LoRA has nothing to adapt: train it all
train:
  max_steps: {steps}
  lr: 1.0e-3            # from scratch; fine-tuning a real checkpoint uses 1e-5 .. 5e-6
  batch_size: 16
  eval_steps: 250
  patience: 4
  warmup_ratio: 0.05
  weight_decay: 0.01
  warm_start: true      # night 2 starts from night 1's champion
registry:
  promote: {{metric: map50, min_gain: 0.0}}
"""
DEMO_STEPS = 2500  # the tiny model "clicks" between ~1000 and ~2000 steps, depending on float noise


def write_demo_config(work: Path, steps: int = DEMO_STEPS) -> Path:
    source = work / "source"
    path = work / "demo.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_CONFIG.format(images=source / "images", annotations=source / "annotations",
                                       steps=steps), encoding="utf-8")
    return path


def add_batch(source: Path, count: int, start: int, troubles: bool) -> str:
    written = generate(source, count=count, size=128, seed=5, start=start, troubles=troubles,
                       max_defects=1, extent=DEFECT_EXTENT)
    extra = " + a truncated JPEG, an XML whose image is missing, a macOS junk file" if troubles else ""
    return (f"{'generated' if start == 0 else 'new images landed:'} {written['images']} images "
            f"({written['grayscale']} grayscale, {written['boxes']} boxes){extra} under {source}")


def demo_summary(first: dict, second: dict, home: str | None) -> str:
    lines = []
    for night, result in (("night 1", first), ("night 2", second)):
        summary = result["summary"]
        states = [s for _, s in result["task_states"]]
        cached = states.count("Cached")
        if not summary:
            lines.append(f"{night}: {result['state'].name} {result['state'].message or ''}")
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
    final = second["summary"] or first["summary"]
    if final:
        mlflow_dir = Path(home or ".defectflow") / "mlflow"
        lines += ["", "where to look:",
                  "  Prefect UI (flow runs, task states, artifacts):  make ui  ->  http://127.0.0.1:4200",
                  f"  MLflow registry:  {ui_command(final['tracking_uri'], mlflow_dir)}",
                  f"  metrics and plots:  {Path(final['train']['model_dir']).parent / 'eval'}"]
    return "\n".join(lines)
