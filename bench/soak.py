"""A year in twenty minutes: two production lines on one home and one Prefect server, a new
process every night, runs killed at random moments, the disk watched.

    python -m bench.soak [--nights 12] [--kills 4] [--images 120] [--seed 0]

Each line (its own config, default work dir `<home>/lines/<name>`) gets a generated LabelImg
source; before every night +3% new images land, a few are relabelled and a few deleted. Every
night is `defectflow --home H run CONFIG` in a new process group against the one server; in
`--kills` nights (chosen with the seed, over both lines) the whole group is SIGKILLed at a random
moment and the night is run again. At the end it checks and writes to bench/RESULTS.md (a table
and bench/soak.png): registry versions = successful nights per line, every champion change
allowed by the gate, bytes outside the content store's images (memos and Prefect's database
included: the soak ages Prefect's records a day a night, and Prefect's own vacuum deletes those
past a 3-day retention) at the last night at most 1.5x those at night 4, store bytes per image
flat, nothing left behind by the kills. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import measured_at, write_section

HERE = Path(__file__).resolve().parent
LINES = ("line-a", "line-b")
CONFIG = """name: {name}
source: {{format: voc, images: {source}/images, annotations: {source}/annotations}}
grayscale: convert
split: {{train: 0.7, validation: 0.15, test: 0.15}}
labels: [patch, scratch, spot]
shard_size: 64
model: {{checkpoint: tiny, lora: {{r: 4, alpha: 8, dropout: 0.0}}}}
train: {{max_steps: 6, lr: 1.0e-3, batch_size: 8, eval_steps: 3, patience: 10, select_images: 8,
        warm_start: true, warm_start_steps: 3}}
evaluate: {{batch_size: 16}}
registry: {{promote: {{metric: map50, min_gain: 0.0}}}}
retention: {{runs: 3}}
"""
LEFTOVERS = re.compile(r"(^\.dataset\.partial-|\.tmp$|\.part$)")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def land(source: Path, rng: random.Random, seed: int, next_number: int) -> tuple[int, dict]:
    """+3% new images, 1% relabelled (a box's class changes), 0.5% deleted (at least one each)."""
    from tasks.demo.sample_data import generate

    xmls = sorted((source / "annotations").glob("*.xml"))
    new = max(1, round(0.03 * len(xmls)))
    generate(source, count=new, size=64, seed=seed, start=next_number, troubles=False)
    classes = ("patch", "scratch", "spot")
    relabelled = rng.sample(xmls, max(1, round(0.01 * len(xmls))))
    for xml in relabelled:
        text = xml.read_text()
        current = re.search(r"<name>(\w+)</name>", text)
        if current:
            other = next(c for c in classes if c != current.group(1))
            xml.write_text(text.replace(current.group(0), f"<name>{other}</name>", 1))
    deleted = rng.sample([x for x in xmls if x not in relabelled], max(1, round(0.005 * len(xmls))))
    for xml in deleted:
        for image in (source / "images").glob(xml.stem + ".*"):
            image.unlink()
        xml.unlink()
    return next_number + new, {"added": new, "relabelled": len(relabelled), "deleted": len(deleted)}


def night(home: Path, config: Path, kill_after: float | None, log: Path) -> tuple[str, float]:
    """One night in a new process group; with `kill_after`, the group is SIGKILLed then. What
    it printed goes to `log`."""
    started = time.monotonic()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", str(home), "run", str(config)],
        cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        output = process.communicate(timeout=kill_after)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log.write_text(process.communicate()[0] or "")
        return "killed", time.monotonic() - started
    log.write_text(output)
    if process.returncode != 0:
        raise RuntimeError(f"{config.stem}: night failed (rc {process.returncode}):\n{output[-3000:]}")
    return ("nothing new" if "trained nothing" in output else "trained"), time.monotonic() - started


def disk(home: Path) -> dict:
    """Bytes of the home: the content store's images (they grow with the images), and everything
    else, the part retention must keep flat: run folders, checkpoints, MLflow files, manifests,
    datasets, the memos (shown apart too) and Prefect's own database and logs (apart too)."""
    store_images = home / "store" / "images"
    images = sum(1 for p in store_images.rglob("*") if p.is_file()) if store_images.is_dir() else 0
    image_bytes = folder_bytes(store_images) if store_images.is_dir() else 0
    return {"outside_store_images": folder_bytes(home) - image_bytes,
            "store_image_bytes": image_bytes, "store_images": images,
            "memo_bytes": folder_bytes(home / "store" / "memos"),
            "prefect_bytes": folder_bytes(home / "prefect")}


# A night is a day: after each night of both lines, the soak ages what Prefect's vacuum judges by
# (finished runs' end times, events' times) by one day, so its own vacuum, with a retention of
# RETENTION_DAYS, deletes what a real calendar would have it delete. Start times (what status and
# home collection read) are left as they are.
RETENTION_DAYS = 3
PREFECT_VACUUM = {
    "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(RETENTION_DAYS * 86400),
    "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"P{RETENTION_DAYS}D",  # a timedelta, ISO 8601
    "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": "5",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ORPHAN_CLEANUP_LOOP_SECONDS": "30",
}
AGED = (("flow_run", "end_time"), ("events", "occurred"), ("event_resources", "occurred"))


def a_day_passes(home: Path) -> None:
    import sqlite3

    with sqlite3.connect(home / "prefect" / "prefect.db", timeout=60) as database:
        for table, column in AGED:
            database.execute(f"UPDATE {table} SET {column} = strftime('%Y-%m-%d %H:%M:%f000', "
                             f"{column}, '-1 day') WHERE {column} IS NOT NULL")


def vacuumed(home: Path, timeout_s: float = 60) -> None:
    """Wait (untimed) until Prefect's vacuum has deleted the runs past the retention."""
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(home / "prefect" / "prefect.db", timeout=60) as database:
            due = database.execute(
                "SELECT count(*) FROM flow_run WHERE parent_task_run_id IS NULL AND end_time < "
                f"strftime('%Y-%m-%d %H:%M:%f000', 'now', '-{RETENTION_DAYS} days')").fetchone()[0]
        if not due:
            return
        time.sleep(2)


def leftovers(home: Path) -> list[str]:
    return [str(p.relative_to(home)) for p in home.rglob("*") if LEFTOVERS.search(p.name)]


def registry_checks(home: Path, nights: dict[str, int]) -> dict:
    """Per line: versions registered vs successful nights (each night lands new images, so each
    one trains once, a killed night's rerun included); every promotion the gate allowed."""
    from mlflow import MlflowClient

    from tasks.nightly.registry import embedded_tracking_uri

    client = MlflowClient(embedded_tracking_uri(home / "mlflow"))
    found = {}
    for name in LINES:
        versions = client.search_model_versions(f"name = '{name}-florence2'")
        decisions = [json.loads(v.tags["promotion"]) for v in versions if "promotion" in v.tags]
        promoted = [d for d in decisions if d.get("promoted")]
        allowed = all(d["champion_metric"] is None or d["challenger_metric"] > d["champion_metric"]
                      for d in promoted)
        found[name] = {"versions": len(versions), "successful_nights": nights[name],
                       "promotions": len(promoted), "promotions_allowed": allowed}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=12)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--images", type=int, default=120, help="images per line on night 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from tasks.core.home import Home
    from tasks.demo.sample_data import generate
    from tasks.nightly.server import free_port, start_home_server, stop_home_server

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="defectflow-soak-"))
    home, logs = work / "home", work / "logs"
    logs.mkdir()
    configs, numbers = {}, {}
    for index, name in enumerate(LINES):
        source = work / name
        generate(source, count=args.images, size=64, seed=index + 1, troubles=False)
        configs[name] = work / f"{name}.yaml"
        configs[name].write_text(CONFIG.format(name=name, source=source))
        numbers[name] = args.images
    schedule = [(n, name) for n in range(1, args.nights + 1) for name in LINES]
    killed = set(rng.sample(range(len(schedule)), args.kills))
    rows, successful, seconds_seen = [], dict.fromkeys(LINES, 0), [20.0]
    # The home's lasting server, as `defectflow server start` starts it: every night's process
    # finds it through the home, both lines use it, and no kill of a night takes it down.
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(PREFECT_VACUUM)
    server = start_home_server(Home(home), free_port())
    print(f"soak in {work}; the home's Prefect server: {server['url']}", flush=True)
    try:
        for slot, (number, name) in enumerate(schedule):
            landed = {"added": args.images} if number == 1 else None
            if number > 1:
                numbers[name], landed = land(work / name, rng, 10 * number + LINES.index(name),
                                             numbers[name])
            kills, first = 0, None
            if slot in killed:  # a moment before the shortest night so far ends: the kill lands
                first = night(home, configs[name], rng.uniform(0.05, 0.95) * min(seconds_seen),
                              logs / f"{number:02d}-{name}-killed.log")
                kills = int(first[0] == "killed")
            outcome, seconds = night(home, configs[name], None, logs / f"{number:02d}-{name}.log")
            if first is not None and not kills:  # it ended before the kill: that night counts
                rerun, (outcome, seconds) = outcome, first
                print(f"night {number} of {name} ended before its kill; run again: {rerun}",
                      flush=True)
            seconds_seen.append(seconds)
            successful[name] += 1  # night() raises on a failed night
            if name == LINES[-1]:  # the night is over for both lines: a day passes
                a_day_passes(home)
                vacuumed(home)
            rows.append({"night": number, "line": name, "outcome": outcome, "killed_before": kills,
                         "seconds": round(seconds, 1), **landed, **disk(home)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_home_server(Home(home))
    result = checks(rows, registry_checks(home, successful), leftovers(home), args.kills)
    (HERE / "soak.json").write_text(json.dumps({"rows": rows, **result}, indent=1))
    plot(rows, HERE / "soak.png")
    write_section(section(rows, result, args), "## Soak")
    print(json.dumps(result, indent=1))
    sys.exit(0 if all(result["checks"].values()) else 1)


def checks(rows: list[dict], registry: dict, left: list[str], kills: int) -> dict:
    last = max(r["night"] for r in rows)
    at = {n: [r for r in rows if r["night"] == n][-1] for n in (4, last)}
    per_image = {n: at[n]["store_image_bytes"] / max(1, at[n]["store_images"]) for n in at}
    growth = at[last]["outside_store_images"] / at[4]["outside_store_images"]
    return {
        "registry": registry, "leftovers": left, "outside_growth_last_vs_4": round(growth, 3),
        "store_bytes_per_image": {str(n): round(v) for n, v in per_image.items()},
        "checks": {
            "versions_equal_successful_nights": all(r["versions"] == r["successful_nights"]
                                                 for r in registry.values()),
            "every_champion_change_allowed": all(r["promotions_allowed"] for r in registry.values()),
            "outside_store_images_at_most_1.5x_night_4": growth <= 1.5,
            "store_bytes_per_image_flat": per_image[last] <= 1.2 * per_image[4],
            "nothing_left_behind": not left,
            f"{kills}_kills_landed": sum(r["killed_before"] for r in rows) == kills,
        },
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (disk_axis, time_axis) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for name in LINES:
        mine = [r for r in rows if r["line"] == name]
        time_axis.plot([r["night"] for r in mine], [r["seconds"] for r in mine], "o-", label=name)
    nights = [r["night"] for r in rows if r["line"] == LINES[-1]]
    after = [r for r in rows if r["line"] == LINES[-1]]
    disk_axis.plot(nights, [r["outside_store_images"] / 2**20 for r in after], "o-",
                   label="outside the store's images")
    disk_axis.plot(nights, [r["store_image_bytes"] / 2**20 for r in after], "s-",
                   label="store images")
    disk_axis.set(xlabel="night", ylabel="MiB in the home", title="disk after each night")
    time_axis.set(xlabel="night", ylabel="seconds", title="seconds per night (new process)")
    for axis in (disk_axis, time_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def section(rows: list[dict], result: dict, args) -> str:
    table = "\n".join(
        f"| {r['night']} | {r['line']} | {r['outcome']} | {r['killed_before']} | {r['seconds']:.0f} "
        f"| {r['outside_store_images'] / 2**20:.1f} | {r['memo_bytes'] / 2**20:.2f} "
        f"| {r['prefect_bytes'] / 2**20:.1f} | {r['store_image_bytes'] / 2**20:.2f} |"
        for r in rows)
    verdicts = "\n".join(f"- {name}: {'met' if ok else '**missed**'}"
                         for name, ok in result["checks"].items())
    commit = measured_at()
    return (
        f"## Soak (issues 27, 40): `make soak` (`python -m bench.soak`) at {commit}, "
        f"{time.strftime('%Y-%m-%d')}\n\n"
        f"Two lines, {args.nights} nights each, one home and one Prefect server, a new process "
        f"every night; {args.kills} nights killed (SIGKILL of the process group) at a random "
        "moment and run again. Tiny Florence-2 with LoRA, a few steps a night. A night is a "
        "day: after each, Prefect's records age a day and its own vacuum deletes those past "
        f"{RETENTION_DAYS} days; memos and Prefect's database count as outside the store's "
        "images.\n\n"
        f"{verdicts}\n\nOutside the store's images, last night / night 4: "
        f"{result['outside_growth_last_vs_4']}; store bytes per image (night 4, last): "
        f"{result['store_bytes_per_image']}; registry: {json.dumps(result['registry'])}; "
        f"left behind: {result['leftovers'] or 'nothing'}.\n\n"
        "| night | line | outcome | killed before | seconds | MiB outside store images | "
        "of which memos | of which Prefect's database and logs | MiB store images |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + table
        + "\n\n![disk and seconds per night](soak.png)\n")


if __name__ == "__main__":
    main()
