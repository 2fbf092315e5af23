"""Learning measured, not hoped for: the demo's night 1 (a LoRA adapter on the pretrained tiny
base) for several seeds, each in a fresh process, with its test mAP50 (per class too), its
validation curve and its minutes; then the same on a base pretrained with another seed.

    python -m bench.learning [--seeds 1 2 3 4 5] [--other-base-seed 1] [--other-base-nights 5 2]

Each base is built once (its minutes reported apart), as `make demo` builds it once per home.
Writes bench/learning.json and bench/learning.png (the validation curves) and the RESULTS.md
section, with the commit the figures were measured at.
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

from bench.results import measured_at, write_section
from flows.demo import DEFAULT_SEED

HERE = Path(__file__).resolve().parent
GOAL = 0.8  # tasks/demo/scenario.NIGHT1_EXPECTED_MAP50: what the demo says night 1 reaches


def defectflow(home: Path, *args: str) -> None:
    command = [str(Path(sys.executable).parent / "defectflow"), "--home", str(home), *args]
    subprocess.run(command, cwd=HERE.parent, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def build_base(work: Path, seed: int) -> tuple[Path, float]:
    """A home holding only the base pretrained with `seed`, and the minutes it took."""
    started = time.monotonic()
    home = work / f"base-home-{seed}"
    defectflow(home, "build-base", "--seed", str(seed))
    return home / "bases", (time.monotonic() - started) / 60


def first_night(work: Path, bases: Path, base_seed: int, seed: int) -> dict:
    """The demo's night 1 for `seed`, in a home of its own (its own registry: no champion from
    another seed to warm start from) holding a copy of the base."""
    name = f"base{base_seed}-seed{seed}"
    home = work / f"home-{name}"
    shutil.copytree(bases, home / "bases")
    started = time.monotonic()
    defectflow(home, "demo", "--work", str(work / name), "--seed", str(seed), "--nights", "1")
    night = json.loads((work / name / "demo_summary.json").read_text())["nights"][0]
    if night["train"]["adapter"] or night["champion_map50"] is not None:
        raise RuntimeError(f"{name}: night 1 started from a champion: not a first night")
    run = next((work / name / "nightly" / "runs").glob("*/train_summary.json")).parent
    trained = json.loads((run / "train_summary.json").read_text())
    per_class = json.loads((run / "eval" / "metrics.json").read_text())["per_class"]
    curve = [(step, round(value, 3)) for step, value in trained["curves"].get("val_map50", [])]
    return {"base_seed": base_seed, "seed": seed, "test_map50": night["challenger_map50"],
            "test_ap50_per_class": {label: round(c["ap50"], 3) for label, c in per_class.items()},
            "validation_map50": curve,
            # Steps to the goal: the first evaluation at or past it on validation; on test, the
            # step of the checkpoint the test figure is of (the only one tested), if it passed.
            "steps_to_goal": {"validation": next((step for step, value in curve if value >= GOAL), None),
                              "test": chosen_step(trained["best_checkpoint"])
                              if (night["challenger_map50"] or 0) >= GOAL else None},
            "best_checkpoint": trained["best_checkpoint"], "global_step": night["train"]["global_step"],
            "minutes": round((time.monotonic() - started) / 60, 2)}


def chosen_step(checkpoint: str | None) -> int | None:
    """The step of a Trainer checkpoint folder (`checkpoint-750` -> 750)."""
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, DEFAULT_SEED],
                        help="night-1 seeds on the demo's base (seed 0)")
    parser.add_argument("--other-base-seed", type=int, default=1,
                        help="the seed of a second base (pretrained from other random weights)")
    parser.add_argument("--other-base-nights", type=int, nargs="*", default=[DEFAULT_SEED, 2],
                        help="night-1 seeds on the second base (none: no second base)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="defectflow-learning-"))
    plan = [(0, args.seeds)] + ([(args.other_base_seed, args.other_base_nights)]
                                if args.other_base_nights else [])
    base_minutes, nights = {}, []
    for base_seed, seeds in plan:
        bases, base_minutes[base_seed] = build_base(work, base_seed)
        print(f"base {base_seed}: built in {base_minutes[base_seed]:.1f} min", flush=True)
        for seed in seeds:
            nights.append(first_night(work, bases, base_seed, seed))
            night = nights[-1]
            print(f"base {base_seed} seed {seed}: test mAP50 {night['test_map50']:.3f} "
                  f"{night['test_ap50_per_class']}, validation {night['validation_map50']}, "
                  f"{night['minutes']:.1f} min", flush=True)
    scores = [n["test_map50"] or 0.0 for n in nights]
    result = {"measured_at": measured_at(), "cores": os.cpu_count(),
              "base_minutes": {str(seed): round(m, 2) for seed, m in base_minutes.items()},
              "nights": nights, "min_test_map50": min(scores),
              "median_test_map50": statistics.median(scores),
              "median_minutes": statistics.median(n["minutes"] for n in nights),
              "goal": f"every night >= {GOAL}", "met": min(scores) >= GOAL}
    (HERE / "learning.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_curves(nights, HERE / "learning.png")
    write_section(section(result), "## Learning")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "nights"}, indent=1))


def plot_curves(nights: list[dict], path: Path) -> None:
    """Validation mAP50 against steps, one line per night (dashed: the other base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for night in nights:
        steps, values = zip(*night["validation_map50"], strict=True) if night["validation_map50"] \
            else ((), ())
        axes.plot(steps, values, "--" if night["base_seed"] else "-", marker=".",
                  label=f"base {night['base_seed']} seed {night['seed']}: test {night['test_map50']:.2f}")
    axes.axhline(GOAL, color="gray", linewidth=0.8)
    axes.set(xlabel="step", ylabel="validation mAP50", ylim=(0, 1.02),
             title="demo night 1: validation mAP50 while the adapter trains")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def section(result: dict) -> str:
    rows = "\n".join(
        f"| {n['base_seed']} | {n['seed']} | {n['test_map50']:.3f} | "
        + ", ".join(f"{label} {ap:.2f}" for label, ap in n["test_ap50_per_class"].items())
        + f" | {' '.join(f'{v:.2f}' for _, v in n['validation_map50'])} | "
        f"{n['steps_to_goal']['validation']} / {n['steps_to_goal']['test']} | {n['global_step']} | "
        f"{n['minutes']:.1f} |" for n in result["nights"])
    verdict = "met" if result["met"] else "**missed**"
    bases = ", ".join(f"seed {seed}: {minutes:.1f} min" for seed, minutes in result["base_minutes"].items())
    return (
        f"## Learning (issues 11, 28): `make bench-learning` (`python -m bench.learning`) at "
        f"{result['measured_at']}, {time.strftime('%Y-%m-%d')}\n\n"
        "The demo's night 1 (a LoRA adapter on the tiny base pretrained offline on shapes; checkpoint "
        "chosen by validation mAP50), one fresh process per night, on this machine's "
        f"{result['cores']} cores; base 0 is the demo's, the other base was pretrained from other "
        "random weights. Figures in `bench/learning.json`, the validation curves in "
        "`bench/learning.png`.\n\n"
        "| base | seed | test mAP50 | test AP50 per class | validation mAP50 every eval_steps "
        f"| steps to {GOAL}: validation / test | steps | minutes |\n"
        "|---|---|---|---|---|---|---|---|\n" + rows + "\n\n"
        f"min {result['min_test_map50']:.3f}, median {result['median_test_map50']:.3f} (goal: "
        f"{result['goal']}: {verdict}); building a base: {bases}.\n")


if __name__ == "__main__":
    main()
