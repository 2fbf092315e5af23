"""Where things live: one home folder holds Prefect's database and results, the content store
and the manifests (so a cached result never points at a file that was cleaned away alone), the
registry, and one folder per production line (config name)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".defectflow"


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    def line(self, name: str) -> Path:
        """A config's own work dir (one production line): its lock, baseline, prepared data,
        runs and champion copies, apart from every other config's."""
        return self.root / "lines" / name

    @property
    def server_record(self) -> Path:
        """`defectflow server start` writes the home's lasting Prefect server here (pid, URL)."""
        return self.prefect / "server.json"

    @property
    def bases(self) -> Path:
        """Base checkpoints defectflow builds itself (the pretrained tiny Florence-2)."""
        return self.root / "bases"


def resolve_home(home: str | Path | None = None) -> Home:
    return Home(Path(home or os.environ.get("DEFECTFLOW_HOME") or DEFAULT_HOME).resolve())


# Third-party console noise: datasets' "Generating train split" bars, MLflow's INFO lines,
# deprecation FutureWarnings (transformers' `is_gradient_checkpointing`, read by peft's
# PeftModel on every load), also in the runs' subprocesses.
QUIET_THIRD_PARTY = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a champion's download, file by file
    "PYTHONWARNINGS": "ignore::FutureWarning",
}


def quiet_third_party() -> None:
    """Keep other libraries' noise off the console (values already set by the user win)."""
    for key, value in QUIET_THIRD_PARTY.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)


def configure_environment(home: Home) -> None:
    """Point Prefect at the home folder before Prefect is imported (its settings load then):
    its database is the home's, whatever PREFECT_HOME says (an exported one would mix two homes'
    runs and deployments), and its API the home's lasting server when that one is up. An explicit
    PREFECT_API_URL is the way to use another server; other values already set by the user win."""
    home.root.mkdir(parents=True, exist_ok=True)
    home.prefect.mkdir(parents=True, exist_ok=True)  # Prefect does not create its own home
    os.environ["PREFECT_HOME"] = str(home.prefect)
    if not os.environ.get("PREFECT_API_URL") and (url := home_server_url(home)):
        os.environ["PREFECT_API_URL"] = url
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # The summary table tells the story; per-task lines still reach the Prefect UI.
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    quiet_third_party()


def serves_home(api_url: str, home: Home) -> bool:
    """Whether the Prefect server at `api_url` answers and keeps its runs in this home (its
    settings name its PREFECT_HOME): a server of another home is never used by accident."""
    import httpx

    try:
        response = httpx.get(f"{api_url}/admin/settings", timeout=5)
        return response.status_code == 200 and \
            Path(response.json().get("home") or "").resolve() == home.prefect.resolve()
    except (httpx.HTTPError, ValueError):
        return False


def home_server_url(home: Home) -> str | None:
    """The API URL of the home's lasting server (`defectflow server start`) when it is up."""
    try:
        url = json.loads(home.server_record.read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if serves_home(url, home) else None


def prefect_server_in_use(home: Home) -> str:
    """The server a command's runs went to, for its summary: Prefect's own setting (what its
    client used), else the temporary one it starts on the home's database."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or f"a temporary local server on {home.prefect}"


class LineTaken(ValueError):
    """Another config file already runs under this config name in the home."""


def claim_line(home: Home, name: str, config_path: str | Path) -> Path:
    """The line's folder, `<home>/lines/<name>`. A name is one line: its registry model, its
    deployment and its work dir go by it, so the first config file that uses a name in a home
    keeps it (`config.json` there) and another file under the same name is refused."""
    folder = home.line(name)
    folder.mkdir(parents=True, exist_ok=True)
    record, ours = folder / "config.json", str(Path(config_path).resolve())
    if not record.exists():
        staged = folder / f".config.json.{os.getpid()}.tmp"
        staged.write_text(json.dumps({"name": name, "config": ours}, indent=1))
        try:
            os.link(staged, record)  # created whole and only if absent: two first uses race here
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    holder = json.loads(record.read_text())["config"]
    if holder != ours:
        raise LineTaken(
            f"config name {name!r} is already used in the home {home.root} by {holder}; "
            f"{ours} has the same name (a line's registry model, deployment and work dir go by "
            f"it): give one of them another `name:`, or use another --home (if {holder} was "
            f"moved, delete {record})")
    return folder
