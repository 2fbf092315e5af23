"""The two nights of `defectflow demo`: synthetic batches and a config sized for 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

from tasks.core.model_config import LoraConfig
from tasks.demo.sample_data import generate

DEMO_FIRST_BATCH = 800
DEMO_SECOND_BATCH = 200
DEMO_INBOX = 12  # unlabelled photos the champion pre-labels
DEMO_VERIFIED = 4  # of them, verified by a person before night 2
DEFECT_EXTENT = (1 / 3, 1 / 2)  # defect sides as a fraction of the 128 px image
DEMO_CONFIG = """# Written by `defectflow demo`: synthetic LabelImg-style defects, a LoRA adapter trained
# on a tiny Florence-2 base that `defectflow build-base` pretrained offline on generic shapes
# (the way a user fine-tunes Florence-2-base; no download).
name: demo
source: {{format: voc, images: {images}, annotations: {annotations}}}
grayscale: convert
augment: {{hflip: true, vflip: false}}
split: {{train: 0.7, validation: 0.1, test: 0.2}}
labels: [patch, scratch, spot]
model:
  kind: florence2
  checkpoint: {base}
  # Adapters on the vision tower's patch-embedding convolutions too: the defects do not look
  # like the base's shapes, and without them the adapter needed twice the steps (issue 46).
  lora:
    r: {rank}
    alpha: {alpha}
    dropout: 0.0
    target_modules: [{modules}]
train:
  max_steps: {steps}
  lr: {lr}              # a toy model's adapter; a real Florence-2 LoRA uses 1e-5 .. 1e-4
  batch_size: 16
  eval_steps: 250
  patience: 3
  min_steps: {min_steps}         # no early stop before the adapter had a fair chance
  select: map50         # the checkpoint that finds defects best on the validation split
  warmup_ratio: 0.05
  weight_decay: 0.01
  seed: {seed}
  warm_start: true      # night 2 trains night 1's champion adapter further,
  warm_start_steps: {warm_steps}  # and needs fewer steps: it starts from a working detector
trigger: {{quiet_seconds: 5, min_new_images: 5}}  # night 2 starts when its images have landed
# After each night the champion pre-labels the inbox for LabelImg and ranks what to label first;
# the XMLs a person has verified there are labels of the next night.
prelabel: {{inbox: {inbox}, adopt: verified}}
registry:
  promote: {{metric: map50, min_gain: 0.0, min_metric: 0.3, max_class_drop: 0.25}}
"""
# Night 1 stops early once validation mAP50 stops rising, never before half of this. With rank
# 16 on the attention and MLP projections only, some seeds drew every `patch` at the average box
# until step 1250 to 2500 (issue 28) and night 1 needed 3000 steps; with rank 32 and the vision
# tower's patch-embedding convolutions adapted too, it leaves it by step 1250 (issue 46,
# bench/RESULTS.md). At lr 3e-3 seed 2 settled with every patch wrong (test AP50 0.08); at 6e-3
# the adapter diverged.
DEMO_STEPS = 1500
DEMO_WARM_STEPS = 250
DEMO_LORA_RANK = 32
DEMO_LORA_MODULES = (*LoraConfig().target_modules, "conv")  # the default projections, and the convs
DEMO_LR = 2.0e-3


def write_demo_config(work: Path, base: Path, seed: int, steps: int = DEMO_STEPS) -> Path:
    source = work / "source"
    path = work / "demo.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_CONFIG.format(
        images=source / "images", annotations=source / "annotations", inbox=work / "inbox",
        base=base, steps=steps,
        min_steps=steps // 2, warm_steps=DEMO_WARM_STEPS, rank=DEMO_LORA_RANK,
        alpha=2 * DEMO_LORA_RANK, modules=", ".join(DEMO_LORA_MODULES), lr=DEMO_LR,
        seed=seed), encoding="utf-8")
    return path


def add_batch(source: Path, count: int, start: int, troubles: bool, seed: int) -> str:
    written = generate(source, count=count, size=128, seed=seed, start=start, troubles=troubles,
                       max_defects=1, extent=DEFECT_EXTENT)
    extra = " + a truncated JPEG, an XML whose image is missing, a macOS junk file" if troubles else ""
    return (f"{'generated' if start == 0 else 'new images landed:'} {written['images']} images "
            f"({written['grayscale']} grayscale, {written['boxes']} boxes){extra} under {source}")


def add_inbox(work: Path, seed: int) -> str:
    """New photos nobody has labelled, in `work/inbox`; what a person would draw on them is kept
    apart (`work/inbox_truth`), for `verify_in_labelimg` to play that person."""
    truth, inbox = work / "inbox_truth", work / "inbox"
    generate(truth, count=DEMO_INBOX, size=128, seed=seed + 1, start=10_000, troubles=False,
             max_defects=1, extent=DEFECT_EXTENT)
    inbox.mkdir(parents=True, exist_ok=True)
    for image in sorted((truth / "images").iterdir()):
        image.replace(inbox / image.name)
    return f"{DEMO_INBOX} unlabelled photos in {inbox}: the champion pre-labels them"


def verify_in_labelimg(work: Path, count: int = DEMO_VERIFIED) -> str:
    """Play the person: correct `count` inbox images in LabelImg and press "Verify Image" (it
    saves the whole XML again, `<annotation verified="yes">`, over the model's pre-label)."""
    truths = sorted((work / "inbox_truth" / "annotations").glob("*.xml"))[:count]
    for truth in truths:
        text = truth.read_text(encoding="utf-8").replace("<annotation>",
                                                         '<annotation verified="yes">', 1)
        (work / "inbox" / truth.name).write_text(text, encoding="utf-8")
    return (f"a person corrected {len(truths)} inbox images in LabelImg and marked them verified: "
            "they are labels from now on")


def demo_record(result: dict) -> dict:
    """One night of `demo_summary.json`: the numbers that say whether the demo learnt, and
    whether the night trained at all (if not, why: the run's final message)."""
    summary = result["summary"] or {}
    decision, train = summary.get("decision") or {}, summary.get("train") or {}
    trained = result["state"].name == "Completed" and bool(train)
    return {
        "state": result["state"].name,
        "trained": trained,
        "reason": None if trained else (result["state"].message or result["state"].name),
        "flow_run_id": str(result["state"].state_details.flow_run_id),
        "challenger_map50": ((summary.get("metrics") or {}).get("coco") or {}).get("map50"),
        "champion_map50": ((summary.get("champion_metrics") or {}).get("coco") or {}).get("map50"),
        "promoted": decision.get("promoted"),
        "decision": decision.get("reason"),
        "train": {"lora": train.get("lora"), "metric_for_best_model": train.get("metric_for_best_model"),
                  "global_step": train.get("global_step"), "adapter": train.get("adapter")},
    }


def untrained_nights(records: list[dict]) -> list[str]:
    """The demo needs every night to train (night 1 on the first batch, night 2 after new
    images landed): one line per night that did not, with its reason. Empty: all trained."""
    return [f"night {number} trained nothing ({record['state']}: {record['reason']})"
            for number, record in enumerate(records, start=1) if not record["trained"]]


# What night 1 reaches on the demo's data when training works: the goal issue 28 sets for
# every seed of `make bench-learning`. A night below it is not a failure (the gate judges models);
# it says that learning regressed since the figure was measured, without anyone re-running it.
NIGHT1_EXPECTED_MAP50 = 0.8


def night1_expectation(record: dict) -> dict:
    """Whether night 1 (a demo night record) reached the test mAP50 it is expected to reach."""
    got = record.get("challenger_map50") if record.get("trained") else None
    return {"metric": "map50", "at_least": NIGHT1_EXPECTED_MAP50, "got": got,
            "reached": got is not None and got >= NIGHT1_EXPECTED_MAP50}


def expectation_line(expectation: dict) -> str:
    got = expectation["got"]
    if expectation["reached"]:
        return f"night 1 reached test mAP50 {got:.3f} (expected at least {expectation['at_least']})"
    return (f"night 1 did not reach the test mAP50 it is expected to reach on this data: "
            f"{'nothing' if got is None else f'{got:.3f}'} < {expectation['at_least']} (learning "
            "regressed since bench/RESULTS.md's figures, or this seed is an unlucky one: "
            "`make bench-learning` measures the spread)")
