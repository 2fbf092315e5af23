"""The cost of a line as it grows: `defectflow prepare` at 1k, 10k and 100k small images, each
size in a home of its own with the home's Prefect server up (`defectflow server start`), as a
nightly line runs. Each command is a new process, timed on the wall clock, as a user waits.

    python -m bench.scale [--sizes 1000 10000 100000] [--work work/bench-scale]

Per size: the cold run (an empty home), the unchanged rerun, the run after 1% new images, the
peak RSS of the command's process tree (the server excluded), the content store's bytes per
image and the task runs Prefect recorded for a night. Writes `scale_per_image_100k_vs_1k`,
`incremental_100k`, `rss_100k_vs_1k`, `unchanged_rerun_seconds_1k` and Prefect's own cost of a
task run (`prefect_cached_task_run_ms`, from `bench.prefect_tasks`) to bench/results.json and the
"Scale" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.results import measured_at, record, write_section
from tasks.demo.sample_data import DrawnBox, voc_xml
from tasks.nightly.server import free_port

REPO = Path(__file__).resolve().parents[1]
SIDE = 32  # px: small images, so that 100k of them fit in a few minutes on 2 cores
CLI = [str(Path(sys.executable).parent / "defectflow")]  # the command a user runs


def small_images(target: Path, count: int, start: int = 0, seed: int = 0) -> Path:
    """`count` distinct 32 x 32 JPEGs, each with one dark box and its VOC XML (numbered from
    `start`: a second call adds new images beside the first ones)."""
    marker = target / f".made-{start}-{count}"
    if marker.exists():
        return target
    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed * 1_000_003 + start)
    for number in range(start, start + count):
        pixels = rng.integers(90, 200, (SIDE, SIDE, 3), dtype=np.uint8)
        x, y, w, h = (int(v) for v in rng.integers(0, SIDE // 2, 4))
        w, h = max(4, w), max(4, h)
        pixels[y:y + h, x:x + w] = 30
        stem = f"s{number:06d}"
        Image.fromarray(pixels).save(target / "images" / f"{stem}.jpg", quality=90)
        (target / "annotations" / f"{stem}.xml").write_text(voc_xml(
            f"{stem}.jpg", SIDE, SIDE, 3, [DrawnBox("dent", x + 1, y + 1, x + w, y + h)]))
    marker.touch()
    return target


def remove_images(target: Path, start: int, count: int) -> None:
    for number in range(start, start + count):
        (target / "images" / f"s{number:06d}.jpg").unlink(missing_ok=True)
        (target / "annotations" / f"s{number:06d}.xml").unlink(missing_ok=True)
    (target / f".made-{start}-{count}").unlink(missing_ok=True)


def timed_command(command: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run `command`; (wall seconds, peak RSS in MiB of its process tree, Prefect servers
    excluded)."""
    import psutil

    start = time.perf_counter()
    with open(log, "a") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        handle, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            try:
                tree = [handle, *(c for c in handle.children(recursive=True)
                                  if "prefect" not in " ".join(c.cmdline()))]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): see {log}")
    return seconds, peak / 2**20


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


FINAL_STATE_TYPES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _newest_prepare_task_runs(api_url: str) -> list[dict]:
    import httpx

    runs = httpx.post(f"{api_url}/flow_runs/filter", timeout=30, json={
        "flows": {"name": {"any_": ["prepare"]}}, "sort": "START_TIME_DESC", "limit": 1}).json()
    where = {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}}
    found: list[dict] = []
    while page := httpx.post(f"{api_url}/task_runs/filter", timeout=30, json={
            **where, "limit": 200, "offset": len(found)}).json():
        found += page
    return found


def server_settles(api_url: str, limit_s: float = 180.0) -> float:
    """Seconds until the server has recorded every task run of the newest prepare run to its
    end (two reads agreeing): it records them from the command's events after the command has
    returned. Waited for outside the timings, so that the next command does not share the
    cores with the server's catching up (a line's nights are a day apart)."""
    start, previous = time.perf_counter(), None
    while time.perf_counter() - start < limit_s:
        runs = _newest_prepare_task_runs(api_url)
        now = (len(runs), all(run["state_type"] in FINAL_STATE_TYPES for run in runs))
        if now[1] and now == previous:
            break
        previous = now
        time.sleep(0.25)
    return time.perf_counter() - start


def last_prepare_task_runs(api_url: str) -> tuple[int, dict[str, float]]:
    """Task runs of the newest prepare flow run as the server records them, and the seconds from
    the first to the last of each step's task runs (the shards' spans overlap: wall time)."""
    from datetime import datetime

    runs = _newest_prepare_task_runs(api_url)
    spans: dict[str, tuple[datetime, datetime]] = {}
    for task_run in runs:
        times = [datetime.fromisoformat(t) for t in (task_run["start_time"],
                                                     task_run["end_time"]) if t]
        if not times:
            continue
        name = task_run["name"].rsplit("-", 1)[0]  # "process-images-3f2" -> process-images
        first, last = spans.get(name, (min(times), max(times)))
        spans[name] = (min(first, *times), max(last, *times))
    in_order = sorted(spans.items(), key=lambda item: item[1][0])
    return len(runs), {name: (last - first).total_seconds() for name, (first, last) in in_order}


def prefect_task_cost(env: dict, api_url: str) -> dict:
    """`bench.prefect_tasks` against this home's server: ms per task run, computed and Cached."""
    done = subprocess.run([sys.executable, "-m", "bench.prefect_tasks"], cwd=REPO,
                          env={**env, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING"},
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(work: Path, size: int, task_cost: bool = False) -> dict:
    source = small_images(work / f"source-{size}", size)
    home = work / f"home-{size}"
    shutil.rmtree(home, ignore_errors=True)
    config = work / f"line-{size}.yaml"
    config.write_text(f"name: scale{size}\nsource: {{format: voc, images: {source / 'images'}, "
                      f"annotations: {source / 'annotations'}}}\ngrayscale: convert\n"
                      "augment: {hflip: true, vflip: false}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["DEFECTFLOW_HOME"] = str(home)
    log = work / f"scale-{size}.log"
    log.unlink(missing_ok=True)
    prepare = [*CLI, "prepare", str(config), "--out", str(work / f"out-{size}")]
    subprocess.run([*CLI, "server", "start", "--port", str(free_port())], cwd=REPO, env=env,
                   check=True, capture_output=True)
    try:
        api_url = json.loads((home / "prefect" / "server.json").read_text())["url"]
        cold, cold_rss = timed_command(prepare, env, log)
        server_settles(api_url)
        store_bytes = folder_bytes(home / "store")
        unchanged, _ = timed_command(prepare, env, log)
        unchanged_server_s = server_settles(api_url)
        _, unchanged_steps = last_prepare_task_runs(api_url)
        extra = max(1, size // 100)
        small_images(source, extra, start=size, seed=1)
        try:
            grown, grown_rss = timed_command(prepare, env, log)
            grown_server_s = server_settles(api_url)
            task_runs, steps = last_prepare_task_runs(api_url)
        finally:
            remove_images(source, size, extra)
        per_task = prefect_task_cost(env, api_url) if task_cost else None
    finally:
        subprocess.run([*CLI, "server", "stop"], cwd=REPO, env=env, capture_output=True)
    row = {"images": size, "cold_s": cold, "cold_s_per_image": cold / size,
           "unchanged_rerun_s": unchanged, "plus_1_percent_s": grown,
           "plus_1_percent_vs_cold": grown / cold, "peak_rss_mib": cold_rss,
           "peak_rss_plus_1_percent_mib": grown_rss, "store_bytes_per_image": store_bytes / size,
           "task_runs_per_night": task_runs, "plus_1_percent_steps_s": steps,
           "unchanged_steps_s": unchanged_steps,
           # after the command returned, until the server had recorded all its task runs
           "server_behind_unchanged_s": unchanged_server_s,
           "server_behind_plus_1_percent_s": grown_server_s}
    if per_task is not None:
        row["prefect_task_run_ms"] = per_task
    print(json.dumps(row), flush=True)
    return row


def render(rows: list[dict]) -> str:
    lines = ["| images | cold s | cold ms/image | unchanged rerun s | +1% s | +1% / cold | "
             "peak RSS MiB (cold / +1%) | store bytes/image | task runs per night | "
             "server recording after the command, s (unchanged / +1%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['images']} | {r['cold_s']:.1f} | {1000 * r['cold_s_per_image']:.2f} | "
                     f"{r['unchanged_rerun_s']:.1f} | {r['plus_1_percent_s']:.1f} | "
                     f"{r['plus_1_percent_vs_cold']:.3f} | {r['peak_rss_mib']:.0f} / "
                     f"{r['peak_rss_plus_1_percent_mib']:.0f} | {r['store_bytes_per_image']:.0f} | "
                     f"{r['task_runs_per_night']} | {r['server_behind_unchanged_s']:.1f} / "
                     f"{r['server_behind_plus_1_percent_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench-scale")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started, commit = time.time(), measured_at()  # (before results.json is written)
    rows = [measure(args.work, size, task_cost=n == 0) for n, size in enumerate(sorted(args.sizes))]
    by_size = {r["images"]: r for r in rows}
    first, last = rows[0], rows[-1]
    if len(rows) > 1:
        record(f"scale_per_image_{last['images'] // 1000}k_vs_{first['images'] // 1000}k",
               last["cold_s_per_image"], first["cold_s_per_image"],
               measurement="cold `defectflow prepare`, wall seconds per image (home server up)")
        record(f"rss_{last['images'] // 1000}k_vs_{first['images'] // 1000}k",
               last["peak_rss_mib"], first["peak_rss_mib"],
               measurement="peak RSS (MiB) of a cold `defectflow prepare` (server excluded)")
    record(f"incremental_{last['images'] // 1000}k", last["plus_1_percent_s"], last["cold_s"],
           measurement="`defectflow prepare` after +1% images / the cold run, wall seconds")
    if 1000 in by_size:
        record("unchanged_rerun_seconds_1k", by_size[1000]["unchanged_rerun_s"], 1.0,
               measurement="wall seconds of an unchanged `defectflow prepare` rerun of 1000 "
               "images, home server up (baseline 1 s: the ratio is the seconds)")
    text = "\n".join([
        "## Scale: `defectflow prepare` at growing sizes (`python -m bench.scale`)", "",
        f"At {commit}, {time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s in all; "
        f"{SIDE} x {SIDE} px JPEGs with one box each, a home per size with its Prefect server up, "
        "each command a new process (wall clock). A command returns when its flow has; the "
        "home's server records the task runs from the command's events after that (the last "
        "column), and each next command waits for it, untimed.", "", render(rows)])
    steps, same = last["plus_1_percent_steps_s"], last["unchanged_steps_s"]
    text += (f"\n\nWhere the runs of {last['images']} images spend their time: seconds from each "
             "step's first task run's start to its last one's end, as Prefect recorded them (the "
             "rest of the wall time is the process: imports, the flow run). "
             f"The unchanged rerun ({last['unchanged_rerun_s']:.1f} s) shows Prefect's cost of "
             f"a Cached task run; the +1% run ({last['plus_1_percent_s']:.1f} s) what the new "
             "images cost.\n\n| step | unchanged rerun | +1% |\n|---|---|---|\n"
             + "\n".join(f"| {name} | {same.get(name, 0.0):.2f} | {seconds:.2f} |"
                          for name, seconds in steps.items()))
    per_task = first["prefect_task_run_ms"]
    record("prefect_cached_task_run_ms", per_task["cached_ms"], 1.0,
           measurement="ms per Cached task run of a flow of 400 trivial tasks with defectflow's "
           "cache policy, home server up (reported, no goal: what each of a night's ~120 image "
           "tasks costs whatever changed)", computed_ms=per_task["computed_ms"])
    text += (f"\n\nPrefect's own cost per task run (`python -m bench.prefect_tasks`, 400 trivial "
             f"tasks, this cache policy, the home's server): {per_task['computed_ms']:.1f} ms "
             f"computed, {per_task['cached_ms']:.1f} ms Cached. A night of {last['images']} "
             f"images has {last['task_runs_per_night']} task runs: about "
             f"{last['task_runs_per_night'] * per_task['cached_ms'] / 1000:.1f} s of it is "
             "Prefect's, whatever changed.")
    write_section(text, "## Scale")
    print(text)


if __name__ == "__main__":
    main()
