"""`prepare_report.json`: every image and box accounted for, found == kept + quarantined + dropped."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from prefect import task
from pydantic_core import from_json

from tasks.core.labels import ANY_LABEL, LabelRules, collisions
from tasks.core.logs import run_logger
from tasks.core.records import read_lines, read_rejections, read_samples
from tasks.core.splits import SPLITS
from tasks.dataset.budget import TargetsCheck
from tasks.dataset.publish import PublishOutput
from tasks.dataset.split import SplitOutput
from tasks.images.shard import ShardOutput
from tasks.ingest.ingest import IngestOutput


def report_step(
    *,
    name: str,
    grayscale_policy: str,
    ingested: IngestOutput,
    shards: list[ShardOutput],
    split: SplitOutput,
    budget: TargetsCheck,
    augmented: dict[str, int],
    published: PublishOutput,
    work: dict[str, int],
    rules: LabelRules = ANY_LABEL,
    steps: dict[str, dict[str, int]] | None = None,
) -> dict:
    classes: Counter = Counter()
    splits: Counter = Counter()
    by_split: dict[str, Counter] = {name: Counter() for name in SPLITS}
    for line in read_lines(budget.images):  # streamed, read as plain JSON: counts only
        sample = from_json(line)
        labels = [box["label"] for box in sample["boxes"]]
        classes.update(labels)
        splits[sample["split"]] += 1
        by_split[sample["split"] or "train"].update(labels)
    quarantine = read_rejections(ingested.rejected)
    box_rejections = read_rejections(ingested.rejected_boxes)
    dropped_gray = []
    counters: Counter = Counter()
    for shard in shards:
        quarantine += read_rejections(shard.rejected)
        box_rejections += read_rejections(shard.rejected_boxes)
        dropped_gray += [s.item for s in read_samples(shard.dropped_grayscale)]
        counters.update(shard.counters)
    quarantine += read_rejections(split.rejected) + read_rejections(budget.rejected)
    box_rejections += read_rejections(split.rejected_boxes) + read_rejections(budget.rejected_boxes)

    kept_boxes = sum(classes.values())
    dropped = Counter(r.reason for r in box_rejections)
    report = {
        "name": name,
        "images": {
            "found": ingested.images_found,
            "kept": sum(splits.values()),
            "quarantined": len(quarantine),
            "dropped_grayscale": len(dropped_gray),
        },
        # VOC in passes (several annotation folders): images whose boxes merged from several.
        # With `prelabel: {adopt: verified}`: the inbox XMLs read as labels (verified, or
        # unreadable and quarantined) and those a person has not verified yet (not read).
        "annotations": {"images_from_several_folders": ingested.several_passes,
                        **({"inbox_read": ingested.inbox["xmls_read"],
                            "inbox_waiting_verification": ingested.inbox["waiting"]}
                           if ingested.inbox is not None else {})},
        "boxes": {
            "found": ingested.boxes_found,
            "kept": kept_boxes,
            "clipped": counters["boxes_clipped"],
            "dropped": dict(sorted(dropped.items())),
        },
        "grayscale": {
            "policy": grayscale_policy,
            "detected": counters["grayscale_detected"],
            "converted": counters["grayscale_converted"],
        },
        "splits": {split_name: splits[split_name] for split_name in SPLITS},
        "augmented": {"hflip": augmented.get("hflip", 0), "vflip": augmented.get("vflip", 0)},
        "classes": dict(sorted(classes.items())),
        "classes_by_split": {name: dict(sorted(c.items())) for name, c in by_split.items()},
        "quarantine": [r.model_dump() for r in sorted(quarantine, key=lambda r: r.item)],
        "quarantine_reasons": dict(sorted(Counter(r.reason for r in quarantine).items())),
        "dropped_boxes": [r.model_dump() for r in sorted(box_rejections, key=lambda r: r.item)],
        "dropped_grayscale": sorted(dropped_gray),
        # Names that differ only by case or spacing: merged (merge_case_variants, label_map)
        # or, if not, two classes the model must tell apart.
        "targets": budget.stats,
        "label_collisions": collisions(ingested.label_spellings, rules),
        "dataset": {"folder": published.folder, "rows": published.rows,
                    "hub_revision": published.hub_revision,
                    # when publish last ran: parquet files written, and taken over unchanged
                    "parquet_files": published.files},
        "work": dict(sorted(work.items())),
        # each step's task runs by final state, as the flow saw them (report excluded)
        "prefect_steps": steps or {},
        "fingerprint": published.fingerprint,
    }
    check_counts(report)
    return report


def check_counts(report: dict) -> None:
    """The invariants every report must satisfy; a violation is a bug, so fail loudly."""
    images, boxes = report["images"], report["boxes"]
    if images["found"] != images["kept"] + images["quarantined"] + images["dropped_grayscale"]:
        raise AssertionError(f"image counts do not add up: {images}")
    if boxes["found"] != boxes["kept"] + sum(boxes["dropped"].values()):
        raise AssertionError(f"box counts do not add up: {boxes}")


def write_report(report: dict, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(path)


def story(report: dict) -> list[str]:
    """The report in a few lines a person reads in the run log."""
    images, boxes, targets = report["images"], report["boxes"], report["targets"]

    def counts(counter: dict) -> str:
        return ", ".join(f"{key} {value}" for key, value in counter.items()) or "none"

    lines = [
        f"images: found {images['found']}, kept {images['kept']}, quarantined "
        f"{images['quarantined']} ({counts(report['quarantine_reasons'])}), dropped as grayscale "
        f"{images['dropped_grayscale']}",
        f"boxes: found {boxes['found']}, kept {boxes['kept']}, clipped {boxes['clipped']}, "
        f"dropped ({counts(boxes['dropped'])})",
        f"work this run: {counts(report['work'])} (Cached steps did none)",
        "splits: " + counts(report["splits"]) + "; classes: " + counts(report["classes"]),
        f"targets: longest {targets['max_tokens']} tokens, p99 {targets['p99_tokens']}, over the "
        f"{targets['budget']} budget {targets['over_budget']}",
    ]
    if targets.get("tiling", {}).get("images") or targets.get("tiling", {}).get("sliced_test_images"):
        lines.append("tiling: " + counts(targets["tiling"]))
    return lines


@task(name="prepare-story")
def story_task(report: dict) -> None:
    """The report's lines in the log of the run that called prepare (a subflow has its own)."""
    for line in story(report):
        run_logger().info(line)


@task(name="report")
def report_task(report_path: str, **parts) -> dict:
    """Not cached: it also tells what work this very run did (cached steps did none)."""
    report = report_step(**parts)
    write_report(report, report_path)
    for line in story(report):
        run_logger().info(line)
    return report
