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


def screenshot_tab(browser: str, url: str, tab: str, out: Path, timeout_s: float = 60) -> None:
    """The page at `url` after clicking its tab named `tab`, through Chrome's DevTools protocol:
    the run page's `?tab=` is reset to Logs while the run loads, so the tab is clicked as a user
    would."""
    import base64
    import json
    import time

    import httpx
    from websockets.sync.client import connect

    from tasks.nightly.server import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        chrome = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1400,2600",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    pages = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                    target = next(p for p in pages if p.get("type") == "page")
                    break
                except (httpx.HTTPError, StopIteration, ValueError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            with connect(target["webSocketDebuggerUrl"], max_size=None) as socket:
                calls = iter(range(1, 1_000_000))

                def call(method: str, **params) -> dict:
                    number = next(calls)
                    socket.send(json.dumps({"id": number, "method": method, "params": params}))
                    while True:
                        reply = json.loads(socket.recv(timeout=timeout_s))
                        if reply.get("id") == number:
                            return reply.get("result", {})

                call("Page.enable")
                call("Page.navigate", url=url)
                click = ("(() => { const t = [...document.querySelectorAll('button, [role=tab], .p-tab')]"
                         f".find(e => e.textContent.trim() === {json.dumps(tab)}); "
                         "if (t) { t.click(); return true; } return false; })()")
                while not call("Runtime.evaluate", expression=click,
                               returnByValue=True).get("result", {}).get("value"):
                    if time.monotonic() > deadline:
                        found = call("Runtime.evaluate", returnByValue=True, expression=(
                            "[...document.querySelectorAll('*')].filter(e => e.children.length"
                            f" == 0 && e.textContent.includes({json.dumps(tab)})).map(e => "
                            "e.tagName + '.' + e.className + ':' + e.textContent).slice(0, 10)"))
                        raise TimeoutError(f"no tab {tab!r} on {url}: {found}")
                    time.sleep(0.5)
                time.sleep(5)  # the tab's content loads from the API
                shot = call("Page.captureScreenshot", format="png")
                out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            chrome.terminate()
            chrome.wait(timeout=30)


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
        screenshot_tab(browser, f"{ui}/runs/flow-run/{run.id}", "Artifacts",
                       args.out / "run-artifacts.png")
        print(f"written: {args.out / 'run-artifacts.png'} (the run's Artifacts tab)")
        pages = [("run", f"{ui}/runs/flow-run/{run.id}"),
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
