"""The model server on the CPU, over loopback, with the demo's champion (`make demo` first; without
it the tiny random Florence-2, and the section says so):

    python -m bench.serving [--seconds 30] [--home .defectflow]

- throughput: 8 concurrent clients, one image per request, against the same server with batching
  off (`serving.max_batch: 1`) in the same run: `serving_batching_speedup` (goal >= 2) and p95
  latency at that load;
- a promotion under load: the 8 clients keep sending while the champion alias moves;
  `serving_failed_requests_during_swap` (goal 0), and whether every response to a request sent
  after the first answer from the new version named it.
Writes the "Serving" section of bench/RESULTS.md and the figures in results.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.results import measured_at, record, write_section

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 8


def demo_champion(home: Path, download_to: Path) -> tuple[Path, str]:
    """The demo line's champion model folder, else the tiny random Florence-2; and which."""
    from tasks.nightly.registry import champion_version, download_version, embedded_tracking_uri

    if (home / "mlflow" / "mlflow.db").is_file():
        uri = embedded_tracking_uri(home / "mlflow")
        champion = champion_version(uri, "demo-florence2")
        if champion:
            return (download_version(uri, champion["run_id"], download_to),
                    f"the demo's champion (demo-florence2 v{champion['version']})")
    from tasks.training.tiny import build_tiny_florence

    return (build_tiny_florence(download_to, ["scratch", "spot", "patch"]),
            "the tiny random Florence-2 (no demo champion in the home: run `make demo` first)")


def images(folder: Path, count: int = 32) -> list[bytes]:
    from tasks.demo.sample_data import generate

    generate(folder, count=count, size=128, seed=11, troubles=False, max_defects=1)
    found = []
    for path in sorted((folder / "images").iterdir()):
        found.append(path.read_bytes())
    return found


def load(url: str, bodies: list[bytes], seconds: float, until=None) -> list[tuple]:
    """CLIENTS threads sending one image per request: (sent, answered, version or -status)."""
    answers: list[tuple] = []
    stop = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(timeout=120) as http:
            n = number
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post(f"{url}/predict", content=bodies[n % len(bodies)])
                    outcome = response.json()["model_version"] if response.status_code == 200 \
                        else -response.status_code
                except httpx.HTTPError:
                    outcome = -1
                answers.append((sent, time.monotonic(), outcome))
                n += CLIENTS

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    if until is not None:
        until()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return answers


def throughput(answers: list[tuple], seconds: float) -> dict:
    latencies = sorted(done - sent for sent, done, _ in answers)
    return {"images_per_s": round(len(answers) / seconds, 2),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1), "requests": len(answers)}


def promoted_under_load(line, model: Path, v1: int, bodies: list[bytes],
                        seconds: float) -> tuple[int, dict, list[tuple]]:
    """The clients keep sending while a new version becomes champion a third of the way in."""
    from tasks.nightly.champion_alias import move_champion

    v2, moved = line.register(model, "night-2"), {}

    def promote() -> None:
        time.sleep(seconds / 3)
        move_champion(line.target, v1, v2)
        moved["at"] = time.monotonic()

    return v2, moved, load(line.url, bodies, seconds, threading.Thread(target=promote).start)


def main() -> None:
    from tasks.nightly.champion_alias import move_champion
    from tasks.nightly.server import free_port
    from tests.serving.served import make_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--home", type=Path, default=REPO / ".defectflow")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="defectflow-bench-serving-"))
    model, which = demo_champion(args.home, root / "champion")
    bodies = images(root / "images")
    figures: dict[str, dict] = {}
    for name, serving in (("one image per batch", "{poll_seconds: 1, max_batch: 1, feedback: null}"),
                          ("dynamic batching", "{poll_seconds: 1, max_batch: 8, max_wait_ms: 10, "
                           "feedback: null}")):
        line = make_line(root / name.replace(" ", "-"), serving)
        v1 = line.register(model, "night-1")
        move_champion(line.target, None, v1)
        line.start(free_port())
        line.wait_healthy()
        load(line.url, bodies, 5)  # warm: the first requests pay for lazy set-up
        figures[name] = throughput(load(line.url, bodies, args.seconds), args.seconds)
        print(name, figures[name], flush=True)
        if name == "dynamic batching":
            v2, moved, swap = promoted_under_load(line, model, v1, bodies, args.seconds)
        line.stop()
    failed = [a for a in swap if a[2] < 0]
    first_new = min((done for _, done, v in swap if v == v2), default=None)
    stale_after = [a for a in swap if first_new and a[0] > first_new and a[2] != v2]
    speedup = figures["dynamic batching"]["images_per_s"] / figures["one image per batch"]["images_per_s"]
    write_results(which, args, figures, speedup, swap, failed, first_new, moved, stale_after)


def write_results(which, args, figures, speedup, swap, failed, first_new, moved, stale_after):
    lines = [f"## Serving (issue 44): `python -m bench.serving` at {measured_at()}, "
             f"{time.strftime('%Y-%m-%d')}", "",
             f"CPU, loopback, {which}; {CLIENTS} concurrent clients, one 128 x 128 image per "
             f"request, {args.seconds:g} s each.", "",
             "| server | images/s | p50 ms | p95 ms | requests |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {f['images_per_s']} | {f['p50_ms']} | {f['p95_ms']} | {f['requests']} |"
              for name, f in figures.items()]
    lines += ["", f"Dynamic batching: **{speedup:.2f}x** the images/s of one image per batch "
              "(goal >= 2).", "",
              f"Promotion under load: {len(swap)} requests while the alias moved; **{len(failed)} "
              f"failed** (goal 0); the first answer from the new version came "
              f"{first_new - moved['at']:.1f} s after the move (poll 1 s + download, load and "
              f"warm-up); requests sent after it answered by the old version: {len(stale_after)}."]
    write_section("\n".join(lines), "## Serving")
    record("serving_batching_speedup", figures["dynamic batching"]["images_per_s"],
           figures["one image per batch"]["images_per_s"],
           p95_ms=figures["dynamic batching"]["p95_ms"], model=which)
    record("serving_failed_requests_during_swap", len(failed), 1, requests=len(swap),
           stale_after_first_new=len(stale_after))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
