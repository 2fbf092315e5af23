"""Two lines' first nights on a new home open its embedded registry at the same moment: MLflow
makes and migrates the SQLite tables on first use, and two processes doing it at once failed
("duplicate column name", "Online migration expected to match one row") and could leave the
file half-migrated. The tables are made once, under a lock."""

import subprocess
import sys
import time

from tests.support import REPO

OPEN_AT_ONCE = """
import sys, time
from mlflow import MlflowClient
from tasks.nightly.registry import embedded_tracking_uri
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
uri = embedded_tracking_uri(sys.argv[1])
MlflowClient(uri).search_registered_models()
MlflowClient(uri).search_experiments()
print("ok")
"""


def test_processes_opening_a_new_embedded_registry_at_once_all_get_it_whole(tmp_path):
    for attempt in range(2):  # a race: twice, each with three processes at one moment
        folder = tmp_path / f"mlflow-{attempt}"
        at = str(time.time() + 8)  # after the three have imported MLflow
        opened = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(folder), at],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for _ in range(3)]
        for process in opened:
            out, err = process.communicate(timeout=180)
            assert out.strip() == "ok", err[-1500:]
