"""Look at the Prefect UI as a user would: the newest retrain run, two of its pictures (image
artifacts), the deployments page, the retrain deployment's page, its landing trigger
(Automations) and the Event Feed, screenshotted by a real headless browser, from the home
`make demo` used.

    python -m bench.ui_screenshot [--home work/home] [--out bench/ui]

Starts the home's Prefect server (or uses PREFECT_API_URL), checks through the API that the run
has its image artifacts, then writes one PNG per page with Chromium. Without Chromium (or
Chrome) it says so and exits 0: a person then opens `make ui` instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def screenshot(browser: str, url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
                        "--window-size=1400,1800", "--virtual-time-budget=20000",
                        f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=120)


def newest_retrain_run():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
    return runs[0] if runs else None


def image_artifacts(flow_run_id) -> dict:
    from tests.support import artifacts_of

    found = artifacts_of(flow_run_id)
    return {key: found[key] for key in sorted(k for k in found if k)
            if found[key].type == "image"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / "work" / "home")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "ui")
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("skipped: no Chromium or Chrome on this machine (apt-get install chromium); "
              "open `make ui` instead")
        return
    from tasks.core.home import Home, configure_environment

    home = Home(args.home.resolve())
    configure_environment(home)
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    from tasks.nightly.server import free_port, prefect_server

    with prefect_server(home.prefect, port=free_port()) as api_url:
        run = newest_retrain_run()
        if run is None:
            raise SystemExit(f"no retrain run in {home.prefect}: run `make demo` first")
        pictures = image_artifacts(run.id)
        print(f"run {run.name} ({run.state_name}): image artifacts {list(pictures)}")
        if not pictures:
            raise SystemExit("the run has no image artifact")
        ui = api_url.removesuffix("/api")
        args.out.mkdir(parents=True, exist_ok=True)
        pages = [("run", f"{ui}/runs/flow-run/{run.id}"),
                 ("run-artifacts", f"{ui}/runs/flow-run/{run.id}?tab=Artifacts"),
                 ("deployments", f"{ui}/deployments"),
                 # the landing trigger (an automation of the deployment) and its events
                 ("automations", f"{ui}/automations"), ("events", f"{ui}/events")]
        if run.deployment_id:
            pages.append(("deployment", f"{ui}/deployments/deployment/{run.deployment_id}"))
        pages += [(key, f"{ui}/artifacts/artifact/{artifact.id}") for key, artifact in
                  pictures.items() if key.endswith(("confusion-matrix", "predictions",
                                                    "labelling-queue", "suspect-labels"))]
        for name, url in pages:
            screenshot(browser, url, args.out / f"{name}.png")
            print(f"written: {args.out / f'{name}.png'} ({url})")


if __name__ == "__main__":
    main()
