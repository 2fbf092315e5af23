"""retrain = what is new? -> prepare -> train -> evaluate (challenger and champion, same split)
-> register -> promote."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, runtime
from prefect.states import Cancelled, Completed

from flows.prepare import prepare
from tasks.cache import code_version, folder_hash
from tasks.config import load_config
from tasks.evaluate_model import evaluate_task
from tasks.finetune import check_train_config_task, train_task, warm_start_config
from tasks.ingest import source_fingerprint_task
from tasks.nightly import (
    champion_task,
    promote_task,
    record_success_task,
    whats_new_task,
    work_dir_lock,
)
from tasks.registry import embedded_tracking_uri, register_task
from tasks.runners import prep_task_runner
from tasks.workdir import resolve_home


@flow(name="retrain", log_prints=True)
def retrain(config_path: str, work_dir: str, home: str | None = None,
            max_steps: int | None = None):
    """The nightly run: retrain when new images landed, promote only a better model."""
    config = load_config(config_path)
    where = resolve_home(home)
    work = Path(work_dir).resolve()
    tracking_uri = config.registry.tracking_uri or embedded_tracking_uri(where.mlflow)
    with work_dir_lock(work) as ours:
        if not ours:
            return Cancelled(message="another retrain holds this work dir: skipped, not waited")
        check_train_config_task(config.model, config.train)
        source = source_fingerprint_task(config.source)
        if not whats_new_task(str(work), source):
            return Completed(message="no new images: nothing to retrain")

        report = prepare.with_options(task_runner=prep_task_runner(config.prep))(
            config_path, str(work / "prepared"), str(where.root))
        dataset = str(work / "prepared" / "dataset")
        fingerprint = report["fingerprint"]
        champion = champion_task(tracking_uri, config.model_name, str(work / "champion"))
        model = warm_start_config(config.model, config.train, champion)
        run_dir = work / "runs" / fingerprint
        trained = train_task(dataset, fingerprint, model, config.train, str(run_dir), max_steps)
        metrics = evaluate_task(config.model.kind, dataset, fingerprint, trained["model_dir"],
                                folder_hash(trained["model_dir"]), str(run_dir / "eval"),
                                "test", config.labels)
        champion_metrics = None if champion is None else evaluate_task(
            config.model.kind, dataset, fingerprint, champion["model_dir"],
            folder_hash(champion["model_dir"]), str(run_dir / f"champion-v{champion['version']}-eval"),
            "test", config.labels)
        lineage = {"dataset_fingerprint": fingerprint,
                   "hub_revision": report["dataset"]["hub_revision"] or "",
                   "prefect_flow_run_id": str(runtime.flow_run.id),
                   "config_hash": config.section_hash(), "code_version": code_version(),
                   "base_checkpoint": model.checkpoint}
        version = register_task(tracking_uri, str(where.mlflow / "artifacts"), config.model_name,
                                trained["model_dir"], metrics, lineage,
                                [str(run_dir / "eval" / "metrics.json"), str(run_dir / "loss_curve.png")])
        decision = promote_task(tracking_uri, config.model_name, version["version"], metrics, champion,
                                champion_metrics, config.registry.promote, config.registry.hub_repo,
                                config.registry.hub_private, trained["model_dir"], lineage)
        summary = {"report": report, "train": trained, "metrics": metrics,
                   "champion_metrics": champion_metrics, "version": version, "decision": decision,
                   "tracking_uri": tracking_uri, "source_fingerprint": source}
        record_success_task(str(work), {"source_fingerprint": source, "dataset_fingerprint": fingerprint,
                                        "model_version": version["version"]})
        return summary
