"""Where things live: one home folder holds Prefect's database and results, the content store
and the manifests (so a cached result never points at a file that was cleaned away alone)."""

from __future__ import annotations

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
    """Point Prefect at the home folder before Prefect is imported (its settings load then).
    Values already set by the user win."""
    home.root.mkdir(parents=True, exist_ok=True)
    home.prefect.mkdir(parents=True, exist_ok=True)  # Prefect does not create its own home
    defaults = {
        "PREFECT_HOME": str(home.prefect),
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
