"""RESULTS.md is written by several benchmarks: each owns the sections it writes."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_JSON = RESULTS.with_name("results.json")

# The names the issue asks for, with their goals: (comparison, bound) on the ratio.
GOALS = {
    "prep_vs_decode_limit": ("<=", 1.3),
    "notebook_speedup": (">=", 3.0),
    "incremental_work": ("<=", 0.05),
    "rss_10x": ("<=", 1.2),
    "coco_eval_vs_pycocotools": ("<=", 0.2),
    "train_input_speedup": (">=", 2.0),
    "eval_speedup_vs_seed": (">=", 3.0),
    # bench/scale.py: the cost of a line as it grows (issue 32)
    "scale_per_image_100k_vs_1k": ("<=", 1.1),
    "incremental_100k": ("<=", 0.05),
    "notebook_vs_plus_1_percent": (">=", 20.0),
    "rss_100k_vs_1k": ("<=", 1.5),
    "unchanged_rerun_seconds_1k": ("<=", 5.0),
    # bench/chaos.py: faults injected on real parts, night after night (issue 43)
    "chaos_invariant_breaks": ("<=", 0.0),
    "chaos_nights": (">=", 20.0),
    "disk_growth_20_vs_5": ("<=", 1.2),
    # bench/serving.py: the model server (issue 44)
    "serving_batching_speedup": (">=", 2.0),
    "serving_failed_requests_during_swap": ("<=", 0.0),
}


def record(name: str, value: float, baseline: float, **extra) -> dict:
    """Merge one measurement into results.json: {name: {value, baseline, ratio, goal, met}}
    (each benchmark script records its own names; the others' stay)."""
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    ratio = value / baseline if baseline else float("nan")
    entry = {"value": value, "baseline": baseline, "ratio": ratio, **extra}
    if name in GOALS:
        comparison, bound = GOALS[name]
        entry["goal"] = f"{comparison} {bound:g}"
        entry["met"] = ratio <= bound if comparison == "<=" else ratio >= bound
    results[name] = entry
    RESULTS_JSON.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")
    return entry


def measured_at(checkout: Path = RESULTS.parent) -> str:
    """The commit the figures are measured at (short hash), `+ changes` when the tree has
    uncommitted changes to tracked files, `?` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True,
                              text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    return commit + (" + changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def sections(text: str) -> list[str]:
    """The text cut before every `## ` title (the first part is what comes before any)."""
    parts = text.split("\n## ")
    return [parts[0]] + ["## " + part for part in parts[1:]]


def write_section(text: str, title_prefix: str) -> None:
    """Replace (or append) the section whose title starts with `title_prefix`."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    kept = [part.rstrip("\n") for part in sections(current) if not part.startswith(title_prefix)]
    RESULTS.write_text("\n\n".join(kept) + "\n\n" + text.rstrip("\n") + "\n")


def sections_owned_elsewhere(owned_here: tuple[str, ...]) -> str:
    """The current sections whose titles do not start with one of `owned_here`."""
    if not RESULTS.exists():
        return ""
    parts = sections(RESULTS.read_text())[1:]
    return "\n\n".join(p.rstrip("\n") for p in parts if not p.startswith(owned_here))


def median_time(action, repeats: int) -> float:
    """The median of `repeats` timings of `action()`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
