"""`make chaos`: two served lines on one home, night after night, with faults injected on real
parts at the process boundary, and the invariants checked from outside after every night.

    python -m bench.chaos [--nights 20] [--images 120] [--seed 0]

- line-a's registry is a real `mlflow server` (SQLite, artifacts served) reached through
  bench.fault_proxy (503s, dropped requests and answers, down for a minute now and then), with
  MLflow's client retries low so faults reach the code; line-b's is the embedded SQLite one,
  whose write lock another process holds now and then ("database is locked").
- Both lines are `defectflow serve` processes on the home's lasting Prefect server: nights start
  from landing events (+3% labelled images a night, some relabelled, some deleted; both lines
  land at once, so their nights overlap) and from the cron. Each night one fault, drawn with the
  seed, per line: the night's processes SIGKILLed, the Prefect server restarted during the night
  or while the batch lands, the registry faults, the source folders deleted and made again.
- A night that failed under its fault is run again (a Run, as a person would) until it succeeds.
- After every night, read from the servers directly: bench.chaos_checks. At the end: what was
  left behind. Writes the RESULTS.md section and chaos_* figures; exits 1 on any break.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.chaos_checks import (
    api,
    dataset_breaks,
    event_breaks,
    faults_seen,
    leftover_breaks,
    lock_holder_pid,
    registry_breaks,
)
from bench.fault_proxy import FaultProxy
from bench.soak import CONFIG, PREFECT_VACUUM, a_day_passes, disk, folder_bytes, land, vacuumed

HERE = Path(__file__).resolve().parent
LINES = ("line-a", "line-b")
FAULTS = ("kill", "prefect_restart", "registry", "folder_again", "server_away_landing", None)
SERVE_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
             "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Lines:
    """The home, its server, the two lines' sources, configs, work dirs and registries."""

    def __init__(self, work: Path, images: int, port: int, mlflow_port: int, seed: int):
        from tasks.demo.sample_data import generate
        from tasks.nightly.registry import embedded_tracking_uri

        self.work, self.home, self.port = work, work / "home", port
        self.mlflow = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(mlflow_port), "--backend-store-uri", f"sqlite:///{work / 'mlflow-a.db'}",
             "--artifacts-destination", str(work / "mlflow-a-artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        direct_a = f"http://127.0.0.1:{mlflow_port}"
        self.proxy = FaultProxy(direct_a, seed=seed).start()
        self.direct = {"line-a": direct_a,
                       "line-b": embedded_tracking_uri(self.home / "mlflow")}
        self.configs, self.numbers, self.serves = {}, {}, {}
        self.restarting = threading.Lock()
        for index, name in enumerate(LINES):
            generate(work / name, count=images, size=64, seed=index + 1, troubles=False)
            registry = ("registry: {tracking_uri: '" + self.proxy.url + "', promote: "
                        "{metric: map50, min_gain: 0.0}}\n") if name == "line-a" else ""
            text = CONFIG.format(name=name, source=work / name)
            if registry:
                text = text.replace("registry: {promote: {metric: map50, min_gain: 0.0}}\n",
                                    registry)
            self.configs[name] = work / f"{name}.yaml"
            self.configs[name].write_text(text + "schedule: {cron: '*/20 * * * *'}\n"
                                          "trigger: {quiet_seconds: 3, min_new_images: 1}\n")
            self.numbers[name] = images

    def line_work(self, name: str) -> Path:
        return self.home / "lines" / name

    def server(self, up: bool) -> None:
        from tasks.core.home import Home
        from tasks.nightly.server import start_home_server, stop_home_server

        if up:
            found = start_home_server(Home(self.home), self.port)
            assert found["url"].endswith(f":{self.port}/api"), found
        else:
            stop_home_server(Home(self.home))

    def serve(self, name: str) -> None:
        log = open(self.work / f"serve-{name}.log", "a")  # noqa: SIM115 - the serve's own
        self.serves[name] = subprocess.Popen(
            [str(Path(sys.executable).parent / "defectflow"), "--home", str(self.home), "serve",
             str(self.configs[name])], cwd=HERE.parent, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **SERVE_ENV})

    def deployment(self, name: str) -> dict:
        return api(self.port, f"/deployments/name/retrain/retrain-{name}")

    def runs(self, name: str) -> list[dict]:
        return api(self.port, "/flow_runs/filter", {
            "deployments": {"id": {"any_": [self.deployment(name)["id"]]}},
            "sort": "EXPECTED_START_TIME_ASC"})

    def disk(self) -> dict:
        """The soak's disk figures, line-a's registry server (its database and artifacts)
        counted outside the store's images too."""
        found = disk(self.home)
        served = folder_bytes(self.work / "mlflow-a-artifacts") + sum(
            p.stat().st_size for p in self.work.glob("mlflow-a.db*"))
        return {**found, "outside_store_images": found["outside_store_images"] + served,
                "registry_server_bytes": served}

    def labelled(self, name: str) -> set[str]:
        return {p.stem for p in (self.work / name / "annotations").glob("*.xml")}


def waited(check, seconds: float, every: float = 2.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if found := check():
                return found
        except Exception:  # noqa: BLE001 - a server away a moment: ask again
            pass
        time.sleep(every)
    return None


def kill_tree(pid: int) -> None:
    import psutil

    try:
        process = psutil.Process(pid)
        for each in [*process.children(recursive=True), process]:
            each.kill()
    except psutil.NoSuchProcess:
        pass


def hold_write_lock(database: Path, seconds: float) -> threading.Thread:
    """Another process's write transaction on the registry's SQLite file, held `seconds`."""
    def hold() -> None:
        with sqlite3.connect(database, timeout=60) as connection:
            connection.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)
            connection.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def remake_folders(source: Path) -> None:
    """rm -rf and copy again, as a sync tool does."""
    aside = source.with_name(source.name + "-aside")
    shutil.copytree(source, aside)
    shutil.rmtree(source)
    time.sleep(2)
    shutil.copytree(aside, source)
    shutil.rmtree(aside)


def inject_during(lines: Lines, name: str, fault: str | None, rng: random.Random) -> int:
    """The fault while the line's night runs; how many faults it injected."""
    if fault == "kill":
        holder = waited(lambda: lock_holder_pid(lines.line_work(name)), 120, 0.5)
        if holder:
            time.sleep(rng.uniform(1, 20))
            kill_tree(holder)
            return 1
    elif fault == "prefect_restart":
        time.sleep(rng.uniform(3, 20))
        if not lines.restarting.acquire(blocking=False):
            return 0  # the other line's night restarts it already
        try:
            lines.server(False)
            time.sleep(rng.uniform(10, 40))
            lines.server(True)
        finally:
            lines.restarting.release()
        return 1
    elif fault == "registry" and name == "line-a":
        time.sleep(rng.uniform(0, 15))
        lines.proxy.down(True)
        time.sleep(rng.uniform(30, 90))
        lines.proxy.down(False)
    elif fault == "registry":
        time.sleep(rng.uniform(0, 15))
        hold_write_lock(lines.home / "mlflow" / "mlflow.db", rng.uniform(25, 45)).join()
        return 1
    return 0


def night_of(lines: Lines, name: str, known: set[str], seconds: float = 240) -> dict | None:
    """The landing night that started after `known` runs (the cron's are counted as known)."""
    def new() -> dict | None:
        fresh = [run for run in lines.runs(name) if run["id"] not in known
                 and not run["auto_scheduled"]]
        return fresh[0] if fresh else None
    return waited(new, seconds)


NIGHT_TIMEOUT = {"seconds": 900.0, "tries": 4}  # --night-timeout, --tries


def ended(lines: Lines, run_id: str) -> str:
    state = waited(lambda: (s := api(lines.port, f"/flow_runs/{run_id}")["state_type"])
                   in TERMINAL and s, NIGHT_TIMEOUT["seconds"])
    return state or "NOT_ENDED"


def run_again(lines: Lines, name: str) -> tuple[str, str]:
    """A Run of the line's deployment, as a person would after a failed night: its outcome."""
    run = api(lines.port, f"/deployments/{lines.deployment(name)['id']}/create_flow_run", {})
    return run["id"], ended(lines, run["id"])


def one_night(lines: Lines, number: int, rng: random.Random, champions: dict,
              checked: dict) -> list[dict]:
    """Night `number` of both lines (overlapping), each with its fault; the rows it adds."""
    faults = {name: rng.choice(FAULTS) if number > 1 else None for name in LINES}
    known = {name: {run["id"] for run in lines.runs(name)} for name in LINES}
    away = any(fault == "server_away_landing" for fault in faults.values())
    if away:
        lines.server(False)  # the batch lands while the server is away
    landed = {}
    for name in LINES:
        if number > 1:
            lines.numbers[name], landed[name] = land(lines.work / name, rng, 10 * number
                                                     + LINES.index(name), lines.numbers[name])
        if faults[name] == "folder_again":
            remake_folders(lines.work / name)
    if away:
        time.sleep(rng.uniform(10, 30))
        lines.server(True)
    rows = []
    if number == 1:  # what was there before serve is no landing: a person runs the first night
        nights = {name: api(lines.port, f"/deployments/{lines.deployment(name)['id']}"
                            "/create_flow_run", {}) for name in LINES}
    else:
        nights = {name: night_of(lines, name, known[name]) for name in LINES}
    injected = {name: int(faults[name] in ("server_away_landing", "folder_again")) for name in LINES}
    threads = [threading.Thread(target=lambda n=name: injected.__setitem__(
        n, injected[n] + inject_during(lines, n, faults[n], rng))) for name in LINES
        if nights[name]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in LINES:
        breaks, tries = [], []
        if nights[name] is None:
            breaks.append(f"{name} night {number}: the landing started no night")
        else:
            tries.append((nights[name]["id"], ended(lines, nights[name]["id"])))
            while tries[-1][1] != "COMPLETED" and len(tries) < NIGHT_TIMEOUT["tries"]:
                tries.append(run_again(lines, name))
            if tries[-1][1] != "COMPLETED":
                breaks.append(f"{name} night {number}: failed and never ran again to success "
                              f"({[state for _, state in tries]})")
        found, champions[name] = registry_breaks(lines.direct[name], f"{name}-florence2",
                                                 champions[name], checked[name])
        breaks += found
        if tries and tries[-1][1] == "COMPLETED":
            breaks += dataset_breaks(lines.line_work(name), lines.labelled(name))
        breaks += event_breaks(lines.runs(name))
        seen = sum(faults_seen(lines.port, run_id) for run_id, _ in tries)
        rows.append({"night": number, "line": name, "fault": faults[name] or "none",
                     "outcomes": [state for _, state in tries], "injected": injected[name],
                     "seen": seen + sum(state != "COMPLETED" for _, state in tries),
                     "breaks": breaks, **(landed.get(name) or {}), **lines.disk()})
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("bytes")}),
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=20)
    parser.add_argument("--images", type=int, default=120, help="images per line on night 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--night-timeout", type=float, default=900,
                        help="seconds a night may take before it counts as never ended")
    parser.add_argument("--tries", type=int, default=4, help="runs of a night before it counts "
                        "as never run again to success")
    args = parser.parse_args()
    NIGHT_TIMEOUT.update(seconds=args.night_timeout, tries=args.tries)
    from tasks.nightly.server import free_port

    rng = random.Random(args.seed)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(PREFECT_VACUUM)
    lines = Lines(Path(tempfile.mkdtemp(prefix="defectflow-chaos-")), args.images, free_port(),
                  free_port(), args.seed)
    started, rows = time.monotonic(), []
    champions, checked = dict.fromkeys(LINES), {name: set() for name in LINES}
    lines.server(True)
    print(f"chaos in {lines.work}; Prefect at :{lines.port}; line-a's registry through "
          f"{lines.proxy.url}", flush=True)
    try:
        for name in LINES:
            lines.serve(name)
        assert waited(lambda: all(lines.deployment(n) for n in LINES), 180), "serve never deployed"
        time.sleep(5)
        for number in range(1, args.nights + 1):
            rows += one_night(lines, number, rng, champions, checked)
            a_day_passes(lines.home)
            vacuumed(lines.home)
        for serve in lines.serves.values():
            serve.send_signal(2)
        for serve in lines.serves.values():
            try:
                serve.wait(120)
            except subprocess.TimeoutExpired:
                kill_tree(serve.pid)
        left = leftover_breaks(lines.home, [lines.line_work(n) for n in LINES], lines.port)
    finally:  # a harness that failed leaves nothing running either
        for serve in lines.serves.values():
            kill_tree(serve.pid)
        lines.server(False)
        lines.proxy.stop()
        kill_tree(lines.mlflow.pid)
    result = figures(rows, left, lines.proxy, (time.monotonic() - started) / 60)
    (HERE / "chaos.json").write_text(json.dumps({"rows": rows, **result}, indent=1))
    write_results(rows, result, args)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["chaos_invariant_breaks"] == 0 else 1)


def figures(rows: list[dict], left: list[str], proxy: FaultProxy, minutes: float) -> dict:
    last = max(r["night"] for r in rows)
    outside = {n: [r for r in rows if r["night"] == n][-1]["outside_store_images"]
               for n in (min(5, last), last)}
    breaks = [b for r in rows for b in r["breaks"]] + left
    return {"chaos_invariant_breaks": len(breaks), "breaks": breaks,
            "chaos_nights": min(sum(1 for r in rows if r["line"] == n) for n in LINES),
            "disk_growth_20_vs_5": round(outside[last] / outside[min(5, last)], 3),
            "outside": {"5": outside[min(5, last)], "last": outside[last]},
            "chaos_faults_injected": sum(r["injected"] for r in rows) + proxy.injected(),
            "chaos_faults_seen": sum(r["seen"] for r in rows),
            "chaos_nights_failed_and_rerun": sum(len(r["outcomes"]) > 1 and
                                                 r["outcomes"][-1] == "COMPLETED" for r in rows),
            "proxy": dict(proxy.counts), "minutes": round(minutes, 1)}


def write_results(rows: list[dict], result: dict, args) -> None:
    from bench.results import measured_at, record, write_section

    table = "\n".join(f"| {r['night']} | {r['line']} | {r['fault']} | {' -> '.join(r['outcomes'])}"
                      f" | {r['injected']} | {r['seen']} | {r['outside_store_images'] / 2**20:.1f}"
                      f" | {len(r['breaks'])} |" for r in rows)
    write_section(
        f"## Chaos (issue 43): `make chaos` (`python -m bench.chaos --nights {args.nights} "
        f"--seed {args.seed}`) at {measured_at()}, {time.strftime('%Y-%m-%d')}\n\n"
        f"{result['minutes']} minutes. Invariant breaks: {result['chaos_invariant_breaks']} "
        f"{result['breaks'][:10] or ''}; nights per line: {result['chaos_nights']}; outside the "
        f"store's images, last night / night 5: {result['disk_growth_20_vs_5']}; faults "
        f"injected {result['chaos_faults_injected']} (proxy: {result['proxy']}), seen by the "
        f"code {result['chaos_faults_seen']}; nights failed under a fault and run again to "
        f"success: {result['chaos_nights_failed_and_rerun']}.\n\n"
        "| night | line | fault | outcomes | injected | seen | MiB outside store images | "
        "breaks |\n|---|---|---|---|---|---|---|---|\n" + table + "\n", "## Chaos")
    record("chaos_invariant_breaks", result["chaos_invariant_breaks"], 1, breaks=result["breaks"])
    record("chaos_nights", result["chaos_nights"], 1, measurement="nights per line (the fewer)")
    record("disk_growth_20_vs_5", result["outside"]["last"], result["outside"]["5"],
           measurement="bytes outside the store's images, last night / night 5")
    for name in ("chaos_faults_injected", "chaos_faults_seen", "chaos_nights_failed_and_rerun"):
        record(name, result[name], 1)

if __name__ == "__main__":
    main()
