"""Learning measured, not hoped for: the demo's night 1 (a LoRA adapter on the pretrained tiny
base) for several seeds, each in a fresh process, with its test mAP50 and its minutes.

    python -m bench.learning [--seeds 1 2 3]

The base is built once first (its minutes reported apart), as `make demo` builds it once per home.
Writes bench/learning.json and prints a table; RESULTS.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import write_section

HERE = Path(__file__).resolve().parent
GOAL = 0.6


def defectflow(home: Path, *args: str) -> None:
    command = [str(Path(sys.executable).parent / "defectflow"), "--home", str(home), *args]
    subprocess.run(command, cwd=HERE.parent, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="defectflow-learning-"))
    started = time.monotonic()
    defectflow(work / "base-home", "build-base")
    base_minutes = (time.monotonic() - started) / 60
    nights = []
    for seed in args.seeds:
        # A home of its own per seed (its own registry: no champion from another seed to warm
        # start from), holding a copy of the one base.
        home = work / f"home-{seed}"
        shutil.copytree(work / "base-home" / "bases", home / "bases")
        started = time.monotonic()
        defectflow(home, "demo", "--work", str(work / f"seed-{seed}"), "--seed", str(seed),
                   "--nights", "1")
        night = json.loads((work / f"seed-{seed}" / "demo_summary.json").read_text())["nights"][0]
        if night["train"]["adapter"] or night["champion_map50"] is not None:
            raise RuntimeError(f"seed {seed}: night 1 started from a champion: not a first night")
        nights.append({"seed": seed, "test_map50": night["challenger_map50"],
                       "lora": night["train"]["lora"],
                       "metric_for_best_model": night["train"]["metric_for_best_model"],
                       "global_step": night["train"]["global_step"],
                       "minutes": round((time.monotonic() - started) / 60, 2)})
        print(f"seed {seed}: test mAP50 {night['challenger_map50']:.3f}, "
              f"{nights[-1]['minutes']:.1f} min", flush=True)
    scores = [n["test_map50"] or 0.0 for n in nights]
    result = {"base_minutes": round(base_minutes, 2), "nights": nights,
              "min_test_map50": min(scores), "median_test_map50": statistics.median(scores),
              "median_minutes": statistics.median(n["minutes"] for n in nights),
              "goal": f"every seed >= {GOAL}", "met": min(scores) >= GOAL}
    (HERE / "learning.json").write_text(json.dumps(result, indent=1))
    write_section(section(result), "## Learning")
    print(json.dumps(result, indent=1))


def section(result: dict) -> str:
    rows = "\n".join(f"| {n['seed']} | {n['test_map50']:.3f} | {n['global_step']} | {n['minutes']:.1f} |"
                     for n in result["nights"])
    verdict = "met" if result["met"] else "**missed**"
    return (
        f"## Learning (issue 11): `make bench-learning` (`python -m bench.learning`), "
        f"{time.strftime('%Y-%m-%d')}\n\n"
        "The demo's night 1 (a LoRA adapter on the tiny base pretrained offline on shapes; checkpoint "
        "chosen by validation mAP50), one fresh process per seed, on this machine's "
        f"{os.cpu_count()} cores. Figures in `bench/learning.json`.\n\n"
        "| seed | test mAP50 | steps | minutes |\n|---|---|---|---|\n" + rows + "\n\n"
        f"min {result['min_test_map50']:.3f}, median {result['median_test_map50']:.3f} (goal: "
        f"{result['goal']}: {verdict}); building the base once: {result['base_minutes']:.1f} min.\n")


if __name__ == "__main__":
    main()
