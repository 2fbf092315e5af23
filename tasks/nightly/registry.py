"""MLflow Model Registry: every trained model becomes a version with its lineage; `champion` moves
only when a challenger beats it on the same frozen test split by the configured margin.

Embedded by default (a SQLite file and an artifact folder in the work dir, what `mlflow ui`
shows); any tracking URI for teams. Model files are logged as run artifacts and registered as a
version whose source is that artifact folder, so `from_pretrained` loads a downloaded version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.core.caching import folder_hash
from tasks.core.config import DatasetConfig
from tasks.nightly.embedded_registry import (  # noqa: F401 - re-exported: callers name them here
    embedded_tracking_uri,
    ui_command,
)

CHAMPION, CHALLENGER = "champion", "challenger"
FILES_COLLECTED = "files_collected"  # retention's tag on a version whose model files are gone
UNREACHABLE = "registry unreachable"  # how every RegistryUnreachable's message begins
SERVING_PROFILE = "serving_profile"  # a version's test-set profile (evaluation/profile.py)


class RegistryUnreachable(RuntimeError):
    """The registry could not be asked (a timeout, a 503, a locked database): never "there is
    none". Whoever gets it retries, then fails; nothing is deleted, promoted or skipped on it."""


class RegistryTarget(BaseModel, frozen=True):
    """Where the model versions live: a tracking URI and a registered model name."""

    tracking_uri: str
    model_name: str


def _client(tracking_uri: str):
    """A client of the registry (its store is opened on first use, inside `ask`)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return ask("open the registry", lambda: MlflowClient(tracking_uri=tracking_uri))


def ask(what: str, question: Callable[[], object]):
    """The registry's answer to `question`; RegistryUnreachable when it could not give one."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return question()
    # requests' errors come as MlflowException or OSError; SQLAlchemy's mostly as MlflowException,
    # but not while MLflow opens a locked SQLite file
    except (MlflowException, OSError, SQLAlchemyError) as exc:
        raise RegistryUnreachable(f"{UNREACHABLE} ({what}): {exc}") from exc


def registered_aliases(client, model_name: str) -> dict[str, int]:
    """Every alias of the model and the version it points to. {} only when the registry answers
    that the model does not exist. (Not a lookup by alias: MLflow reports a missing alias as
    INVALID_PARAMETER_VALUE, as it does a malformed name.)"""
    from mlflow.exceptions import MlflowException

    def model():
        try:
            return client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    found = ask(f"model {model_name!r}", model)
    return {} if found is None else {alias: int(version)
                                     for alias, version in (found.aliases or {}).items()}


def alias_version(client, model_name: str, alias: str):
    """The version `alias` points to, or None when the registry answers it has no such alias."""
    version = registered_aliases(client, model_name).get(alias)
    if version is None:
        return None
    return ask(f"{model_name} v{version}", lambda: client.get_model_version(model_name, str(version)))


def _experiment_id(client, name: str, artifact_root: Path | None) -> str:
    """The model's experiment; made with its artifacts under `artifact_root`, or, with None
    (a tracking server), where the server keeps them (`mlflow server --serve-artifacts`)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_root is None:
        return client.create_experiment(name)
    artifact_root.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri())


def register_version(tracking_uri: str, artifact_root: str | Path, model_name: str, model_dir: str | Path,
                     metrics: dict, lineage: dict[str, str], files: list[str | Path] = (),
                     curves: dict[str, list] | None = None,
                     params: dict[str, str] | None = None) -> dict:
    """Log the model folder (+ extra files) in a run and register it as a new model version
    carrying the lineage (plus the model files' hash) and the metrics as tags; alias
    `challenger` points at it. Registering the same files for the same dataset again returns
    the existing version."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    # Idempotent: a retry after a half-done registration, or a rerun after a later step failed,
    # finds the version these files and this dataset already have instead of adding another.
    lineage = {**lineage, "model_files": lineage.get("model_files") or folder_hash(model_dir)}
    existing = find_version(client, model_name, lineage["model_files"],
                            str(lineage.get("dataset_fingerprint", "")))
    if existing is not None:
        client.set_registered_model_alias(model_name, CHALLENGER, existing.version)
        return {"model_name": model_name, "version": int(existing.version),
                "run_id": existing.run_id, "source": existing.source, "existing": True}
    served = tracking_uri.startswith(("http://", "https://"))  # its files live on its server
    experiment_id = _experiment_id(client, model_name,
                                   None if served else Path(artifact_root) / model_name)
    run = client.create_run(experiment_id, run_name=lineage.get("prefect_flow_run_id", "defectflow"),
                            tags={f"defectflow.{k}": str(v) for k, v in lineage.items()})
    run_id = run.info.run_id
    for key, value in (params or {}).items():  # the config that made this model
        client.log_param(run_id, key, value)
    flat = _flat_metrics(metrics)
    for key, value in flat.items():
        client.log_metric(run_id, key, value)
    for name, points in (curves or {}).items():  # the training curves, step by step
        for step, value in points:
            client.log_metric(run_id, f"train.{name}", float(value), step=int(step))
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    for extra in files:
        if Path(extra).exists():
            client.log_artifact(run_id, str(extra), artifact_path="evaluation")
    client.set_terminated(run_id)
    try:
        client.create_registered_model(model_name, description="defectflow defect detector")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {**{k: str(v) for k, v in lineage.items()},
            **{f"metric.{k}": f"{v:.6f}" for k, v in flat.items()}}
    if metrics.get("serving_profile"):  # what model servers compare their images with
        tags[SERVING_PROFILE] = json.dumps(metrics["serving_profile"])
    version = client.create_model_version(model_name, source=f"{run.info.artifact_uri}/model",
                                          run_id=run_id, tags=tags)
    _wait_ready(client, model_name, version.version)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    return {"model_name": model_name, "version": int(version.version), "run_id": run_id,
            "source": version.source}


def find_version(client, model_name: str, model_files: str, dataset_fingerprint: str):
    """The version registered with these model files for this dataset, or None. A version whose
    files retention collected is not one: it cannot be loaded, nor become champion."""
    for version in client.search_model_versions(f"name = '{model_name}'"):
        tags = version.tags or {}
        if tags.get("model_files") == model_files and FILES_COLLECTED not in tags and \
                tags.get("dataset_fingerprint", "") == dataset_fingerprint:
            return version
    return None


def _flat_metrics(metrics: dict) -> dict[str, float]:
    flat = {}
    coco = metrics.get("coco") or {}
    for key in ("map", "map50", "map75"):
        if coco.get(key) is not None:
            flat[key] = float(coco[key])
    for key in ("accuracy", "macro_f1", "parse_failures", "unknown_labels", "n_images"):
        if isinstance(metrics.get(key), int | float):
            flat[key] = float(metrics[key])
    return flat


def _wait_ready(client, name: str, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get_model_version(name, version).status != "READY":
        if time.monotonic() > deadline:
            raise TimeoutError(f"model version {name}/{version} is not READY after {timeout}s")
        time.sleep(0.2)


def champion_version(tracking_uri: str, model_name: str) -> dict | None:
    """The current champion (version, tags, source), or None when the registry answers that
    there is none (RegistryUnreachable when it cannot answer)."""
    version = alias_version(_client(tracking_uri), model_name, CHAMPION)
    if version is None:
        return None
    return {"version": int(version.version), "tags": dict(version.tags), "source": version.source,
            "run_id": version.run_id}


def download_version(tracking_uri: str, run_id: str, destination: str | Path) -> Path:
    """A registered version's model folder on local disk (from_pretrained reads it)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    Path(destination).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model",
                                                    dst_path=str(destination)))


def set_champion(tracking_uri: str, model_name: str, version: int, decision: dict) -> None:
    _client(tracking_uri).set_registered_model_alias(model_name, CHAMPION, str(version))
    record_decision(tracking_uri, model_name, version, decision)


def record_decision(tracking_uri: str, model_name: str, version: int, decision: dict) -> None:
    client = _client(tracking_uri)
    client.set_model_version_tag(model_name, str(version), "promotion", json.dumps(decision))


def record_hub_revision(tracking_uri: str, model_name: str, version: int, revision: str) -> None:
    """The Hub commit the version was pushed as (the dataset's own revision is `hub_revision`)."""
    _client(tracking_uri).set_model_version_tag(model_name, str(version), "model_hub_revision",
                                                revision)


def model_card(model_name: str, metrics: dict, lineage: dict, dataset: str) -> str:
    """A Hub model card whose `model-index` carries the metrics (what the Hub shows on its page)."""
    flat = _flat_metrics(metrics)
    index = [{"name": model_name, "results": [{
        "task": {"type": "object-detection", "name": "Object Detection"},
        "dataset": {"type": dataset, "name": dataset, "split": "test"},
        "metrics": [{"type": key, "value": round(value, 6), "name": key}
                    for key, value in flat.items()
                    if key in ("map", "map50", "map75", "accuracy", "macro_f1")],
    }]}]
    header = json.dumps({"tags": ["defectflow", "florence-2", "object-detection"],
                         "model-index": index}, indent=1)
    lines = ["---", header, "---", "", f"# {model_name}", "",
             "Champion of defectflow's nightly retraining, promoted on the frozen test split.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in flat.items()]
    lines += ["", "Lineage:", "", *[f"- {k}: `{v}`" for k, v in sorted(lineage.items())], ""]
    return "\n".join(lines)


def push_champion_to_hub(model_dir: str | Path, repo_id: str, private: bool, card: str, api=None,
                         sleep: Callable[[float], None] = time.sleep) -> str:
    """One commit to the Hub model repo: the model folder's files and the card as README.md. The
    card is added to the commit, never written into the folder: the folder is the registered
    version, whose files' hash must not change."""
    from huggingface_hub import CommitOperationAdd

    from tasks.core.retry import with_backoff

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()  # HF_TOKEN from the environment, never logged
    folder = Path(model_dir)
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != "README.md")
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(),
                                     path_or_fileobj=str(path)) for path in files]
    operations.append(CommitOperationAdd(path_in_repo="README.md",
                                         path_or_fileobj=card.encode("utf-8")))
    with_backoff(lambda: api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True),
                 sleep=sleep)
    commit = with_backoff(lambda: api.create_commit(repo_id=repo_id, repo_type="model",
                                                    operations=operations,
                                                    commit_message="defectflow: new champion"),
                          sleep=sleep)
    return str(getattr(commit, "oid", None) or commit)


def config_params(config: DatasetConfig) -> dict[str, str]:
    """The settings that shape a model, flat (`train.lr`, `model.lora.r`...), for MLflow."""
    params: dict[str, str] = {"name": config.name}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            params[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    data = config.model_dump(mode="json", include={"model", "train", "augment", "split",
                                                   "grayscale", "targets", "tiling", "registry"})
    for section, value in data.items():
        walk(section, value)
    return {key: value[:500] for key, value in params.items()}


@task(name="register", retries=3, retry_delay_seconds=[5, 20, 60])
def register_task(registry: RegistryTarget, artifact_root: str, model_dir: str, metrics: dict,
                  lineage: dict, files: list[str], curves: dict | None = None,
                  params: dict[str, str] | None = None) -> dict:
    return register_version(registry.tracking_uri, artifact_root, registry.model_name, model_dir,
                            metrics, lineage, files, curves, params)
