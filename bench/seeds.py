"""Tests over a trained model hold on any seed and any CPU of this kind: every test marked
`trains` (it trains a model and asserts what it learnt) run for each pytest-randomly seed
(test order, Python's and NumPy's random state) under each ATEN CPU capability (AVX2 machines
round differently from AVX-512 ones).

    python -m bench.seeds [--seeds 20] [--first-seed 1] [--capabilities avx2 default]

Each run is a fresh pytest process; a failure names its seed and capability and keeps its
output in the table's folder. Writes the RESULTS.md section with the commit and the minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import measured_at, write_section

HERE = Path(__file__).resolve().parent


def run_once(seed: int, capability: str, logs: Path) -> tuple[bool, str, float]:
    """One pytest run of the `trains` tests: (passed, its summary line, seconds)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "trains", "-p", "randomly",
                           f"--randomly-seed={seed}", "-p", "no:cacheprovider"],
                          cwd=HERE.parent, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    (logs / f"{capability}-{seed}.log").write_text(done.stdout + done.stderr)
    summary = next((line for line in reversed(done.stdout.splitlines())
                    if re.search(r"\d+ (passed|failed)", line)), "no summary")
    return done.returncode == 0, summary.strip("= "), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 1..N (default 20)")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="start at this seed (to finish a run that was stopped)")
    parser.add_argument("--capabilities", nargs="+", default=["avx2", "default"])
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="defectflow-seeds-"))
    started, rows, failed = time.monotonic(), [], []
    for capability in args.capabilities:
        for seed in range(args.first_seed, args.seeds + 1):
            passed, summary, seconds = run_once(seed, capability, logs)
            rows.append(f"| {capability} | {seed} | {'pass' if passed else 'FAIL'} | {summary} "
                        f"| {seconds:.0f} |")
            print(rows[-1], flush=True)
            if not passed:
                failed.append(f"{capability}/{seed}")
    minutes = (time.monotonic() - started) / 60
    write_section("\n".join([
        f"## Tests over trained models, seeds {args.first_seed}-{args.seeds} x "
        f"{len(args.capabilities)} CPU "
        f"capabilities (at {measured_at()})", "",
        f"`python -m bench.seeds`: every `trains` test in a fresh pytest per seed and "
        f"capability; {minutes:.0f} minutes on {os.cpu_count()} cores; "
        f"{'every run passed' if not failed else 'FAILED: ' + ', '.join(failed)}.", "",
        "| capability | seed | result | pytest says | seconds |", "|---|---|---|---|---|",
        *rows]), "## Tests over trained models")
    print(f"{minutes:.0f} minutes; {len(failed)} failed runs; logs in {logs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
