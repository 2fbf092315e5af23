"""Every target fits the decoder: its length measured in the model tokenizer's tokens.

Florence-2's BART decoder has 1024 positions; a dense image (PCB, additive manufacturing: 50-300
small defects, six tokens or more each) writes a longer target, which training would truncate
(the model learns to stop mid-list) or crash on. Such an image is quarantined as
`target_too_long`, never silently cut. Lengths are exact with the model's own tokenizer when it
is on this machine; otherwise an upper bound: byte-level BPE (BART's, so Florence-2's) spends at
most one token per UTF-8 byte, and each `<loc_N>` is one token.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.core.caching import CACHE_POLICY
from tasks.core.records import (
    Manifest,
    ManifestWriter,
    Rejection,
    Sample,
    box_rejections,
    read_records,
)
from tasks.dataset.loc_tokens import od_target

LOC_TOKEN = re.compile(r"<loc_\d+>")
BYTE_BOUND = "utf-8 bytes (an upper bound for byte-level BPE)"


class TargetsCheck(BaseModel, frozen=True):
    kept: Manifest
    rejected: Manifest
    rejected_boxes: Manifest
    stats: dict


def target_tokenizer(checkpoint: str):
    """(the checkpoint's tokenizer, its name), or (None, BYTE_BOUND) when it is not on this
    machine (a Hub id never downloaded; `tiny`, built at training time): never a download."""
    from transformers import AutoTokenizer

    if checkpoint == "tiny":
        return None, BYTE_BOUND
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError):
        return None, BYTE_BOUND
    return tokenizer, f"{checkpoint} tokenizer"


def target_tokens(target: str, tokenizer=None) -> int:
    """Decoder positions the target takes, `<s>` and `</s>` included."""
    if tokenizer is not None:
        return len(tokenizer(target).input_ids)
    return len(LOC_TOKEN.findall(target)) + len(LOC_TOKEN.sub("", target).encode()) + 2


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def budget_step(samples: Manifest, budget: int, checkpoint: str,
                manifests_dir: str | Path) -> TargetsCheck:
    """Measure every sample's `<OD>` target; keep those within `budget` tokens."""
    tokenizer, counted_with = target_tokenizer(checkpoint)
    lengths: list[int] = []
    with ManifestWriter(manifests_dir, "within-budget") as kept, \
            ManifestWriter(manifests_dir, "over-budget") as rejected, \
            ManifestWriter(manifests_dir, "over-budget-boxes") as rejected_boxes:
        for sample in read_records(samples, Sample):
            length = target_tokens(od_target(sample.boxes, sample.width, sample.height), tokenizer)
            lengths.append(length)
            if length <= budget:
                kept.add(sample)
                continue
            detail = f"{length} target tokens ({len(sample.boxes)} boxes), over the {budget} budget"
            rejected.add(Rejection(item=sample.item, reason="target_too_long", detail=detail))
            for box in box_rejections(sample.item, len(sample.boxes), "image_rejected",
                                      "target_too_long"):
                rejected_boxes.add(box)
    stats = {"budget": budget, "counted_with": counted_with, "max_tokens": max(lengths, default=0),
             "p99_tokens": percentile(lengths, 99),
             "over_budget": sum(length > budget for length in lengths)}
    return TargetsCheck(kept=kept.manifest, rejected=rejected.manifest,
                        rejected_boxes=rejected_boxes.manifest, stats=stats)


@task(name="target-budget", cache_policy=CACHE_POLICY, persist_result=True)
def budget_task(samples: Manifest, budget: int, checkpoint: str, manifests_dir: str) -> TargetsCheck:
    return budget_step(samples, budget, checkpoint, manifests_dir)
