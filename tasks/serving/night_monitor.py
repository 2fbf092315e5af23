"""Each night, what the line's model servers saw in the last 24 h against the champion's own
test-set profile: a `serving-monitor` artifact, and an alert when a figure moved past
`serving.drift` (a camera or a lamp changed: seen the next morning, not at the next audit)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.config import DatasetConfig
from tasks.core.logs import run_logger
from tasks.nightly.alerts import send_alert
from tasks.nightly.registry import SERVING_PROFILE, RegistryTarget, champion_version
from tasks.serving.monitoring import Monitor, drift, last_day

ROWS = (("images", "images"), ("no_box_share", "share of images with no box"),
        ("boxes_per_image", "boxes per image"), ("brightness", "brightness (mean +- spread)"),
        ("contrast", "contrast (mean +- spread)"), ("latency_ms", "latency p50 / p95 (ms)"))


def serving_monitor_step(work: Path, registry: RegistryTarget, config: DatasetConfig) -> dict:
    """The last 24 h of every replica, the champion's profile (its version's tag), what drifted.
    RegistryUnreachable when the champion cannot be read (then nothing is compared)."""
    recent = last_day(work / "monitoring").summary()
    champion = champion_version(registry.tracking_uri, registry.model_name)
    profile = (champion or {}).get("tags", {}).get(SERVING_PROFILE)
    reference = json.loads(profile) if profile else None
    moved = drift(recent, reference, config.serving.drift) if reference else []
    return {"champion_version": champion["version"] if champion else None, "recent": recent,
            "reference": reference, "drift": moved}


def _cell(value) -> str:
    if isinstance(value, dict):
        return " / ".join("-" if v is None else f"{v}" for v in value.values())
    return "-" if value is None else f"{value}"


def monitor_markdown(found: dict) -> str:
    reference = found["reference"] or {}
    lines = [f"# Served images, last 24 h, against champion v{found['champion_version']}'s "
             "test set", "", "| figure | last 24 h | test set |", "|---|---|---|"]
    lines += [f"| {label} | {_cell(found['recent'].get(key))} | {_cell(reference.get(key))} |"
              for key, label in ROWS]
    lines += ["", "**Drift:** " + ("; ".join(found["drift"]) if found["drift"] else "none")]
    if not found["reference"]:
        lines.append("\n(the champion has no test-set profile: registered before it was kept)")
    return "\n".join(lines)


@task(name="serving-monitor", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def serving_monitor_task(work_dir: str, registry: RegistryTarget, config: DatasetConfig) -> dict:
    """The night's look at what the line's servers saw (the `serving-monitor` artifact); never
    cached: the same inputs read other hours tomorrow."""
    from prefect.artifacts import create_markdown_artifact

    found = serving_monitor_step(Path(work_dir), registry, config)
    create_markdown_artifact(key="serving-monitor", markdown=monitor_markdown(found),
                             description="served images vs the champion's test set")
    if found["drift"]:
        title = f"defectflow serving: {config.name}'s images drifted"
        run_logger().warning("%s: %s", title, "; ".join(found["drift"]))
        Monitor(Path(work_dir) / "monitoring", "night").alert(title, "; ".join(found["drift"]))
        notify = config.notify
        if notify.target and "serving" in notify.on:
            send_alert(notify.target, title, "; ".join(found["drift"]))
    return found
