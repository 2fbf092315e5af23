"""What changed since the last successful night: images added, removed, relabelled (same pixels,
other boxes) or replaced (same name, other pixels), the class histogram's shift, the test split's
growth. The index it compares is the published dataset's, one entry per source image, kept in
the work dir after each successful run (a failed run does not move the baseline).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.core.records import Box
from tasks.dataset.loading import load_published
from tasks.images.tiles import merge_tile_boxes

INDEX_FILE = "dataset_index.json"


def dataset_index(dataset_dir: str | Path) -> dict[str, dict]:
    """{source image: {sha256, split, labels, boxes}} from a published dataset. A tiled image's
    boxes are gathered from its tiles, back in the image's coordinates, each counted once."""
    loaded = load_published(dataset_dir)
    seen: dict[str, list] = {}  # source image -> [(window, boxes, areas)] per row (tile)
    index: dict[str, dict] = {}
    for split, rows in loaded.items():
        columns = [c for c in ("source_id", "sha256", "boxes", "labels", "augmentation", "tile")
                   if c in rows.column_names]
        for row in rows.select_columns(columns):
            if row["augmentation"] != "none":
                continue
            boxes = [Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3], label=label)
                     for label, b in zip(row["labels"], row["boxes"], strict=True)]
            window = tuple(row.get("tile") or (0, 0, 0, 0))
            seen.setdefault(row["source_id"], []).append(
                (window, boxes, [b.width * b.height for b in boxes]))
            index[row["source_id"]] = {"sha256": row["sha256"], "split": split}
    for item, entry in index.items():
        # A box cut by a tile's edge lies inside the whole box another tile holds: merged as
        # prediction merges tiles (the largest first), each box is counted once.
        rows = seen[item]
        merged = rows[0][1] if len(rows) == 1 else merge_tile_boxes(rows)[0]
        boxes = sorted((b.label, round(b.x1, 1), round(b.y1, 1), round(b.x2, 1), round(b.y2, 1))
                       for b in merged)
        entry["labels"] = dict(Counter(box[0] for box in boxes))
        entry["boxes"] = hashlib.sha256(json.dumps(boxes).encode()).hexdigest()[:16]
    return index


def _classes(index: dict[str, dict]) -> Counter:
    total: Counter = Counter()
    for entry in index.values():
        total.update(entry["labels"])
    return total


def what_changed(before: dict[str, dict] | None, after: dict[str, dict]) -> dict:
    before = before or {}
    common = before.keys() & after.keys()
    old_classes, new_classes = _classes(before), _classes(after)
    return {
        "first_night": not before,
        "images_before": len(before), "images_after": len(after),
        "images_added": len(after.keys() - before.keys()),
        "images_removed": len(before.keys() - after.keys()),
        "images_replaced": sum(before[i]["sha256"] != after[i]["sha256"] for i in common),
        "images_relabelled": sum(before[i]["sha256"] == after[i]["sha256"]
                                 and before[i]["boxes"] != after[i]["boxes"] for i in common),
        # What landed or changed since (empty on a first night: nothing came before it).
        "changed_ids": sorted(i for i in after if before and (
            i not in before or before[i]["sha256"] != after[i]["sha256"]
            or before[i]["boxes"] != after[i]["boxes"])),
        "test_images": {"before": sum(e["split"] == "test" for e in before.values()),
                        "after": sum(e["split"] == "test" for e in after.values())},
        "classes": {name: {"before": old_classes[name], "after": new_classes[name],
                           "delta": new_classes[name] - old_classes[name]}
                    for name in sorted(old_classes.keys() | new_classes.keys())},
    }


def changes_markdown(changes: dict) -> str:
    if changes["first_night"]:
        head = f"First night: {changes['images_after']} images, all new."
    else:
        head = (f"{changes['images_before']} -> {changes['images_after']} images: "
                f"{changes['images_added']} added, {changes['images_removed']} removed, "
                f"{changes['images_relabelled']} relabelled, {changes['images_replaced']} "
                "replaced (same name, other pixels).")
    tests = changes["test_images"]
    lines = ["# What changed since the last successful night", "", head, "",
             f"Test split: {tests['before']} -> {tests['after']} images.", "",
             "| class | boxes before | boxes after | change |", "|---|---|---|---|"]
    lines += [f"| {name} | {c['before']} | {c['after']} | {c['delta']:+d} |"
              for name, c in changes["classes"].items()]
    return "\n".join(lines)


def changes_step(work_dir: str | Path, dataset_dir: str | Path) -> tuple[dict, dict]:
    """(what changed against the last successful night's index, tonight's index)."""
    path = Path(work_dir) / INDEX_FILE
    before = json.loads(path.read_text()) if path.exists() else None
    after = dataset_index(dataset_dir)
    return what_changed(before, after), after


def save_index(work_dir: str | Path, index: dict) -> None:
    path = Path(work_dir) / INDEX_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(path)


@task(name="what-changed")
def changes_task(work_dir: str, dataset_dir: str) -> tuple[dict, dict]:
    """Not cached: it compares with whatever the last successful night left."""
    changes, index = changes_step(work_dir, dataset_dir)
    (Path(dataset_dir).parent / "what_changed.json").write_text(json.dumps(changes, indent=1))
    create_markdown_artifact(changes_markdown(changes), key="what-changed",
                             description="images and classes since the last successful night")
    return changes, index


@task(name="save-dataset-index")
def save_index_task(work_dir: str, index: dict) -> None:
    save_index(work_dir, index)
