"""retrain = what is new? -> prepare -> train -> evaluate (challenger and champion, same split)
-> register -> promote -> record the night -> (push the new champion to the Hub, pre-label the
inbox with the champion, retention: steps that cannot fail or undo the night)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from prefect import flow, get_run_logger, runtime
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed

from flows.prepare import SOURCE_UNREADABLE, prepare
from tasks.core.caching import code_version, folder_hash
from tasks.core.config import DatasetConfig, load_config
from tasks.core.home import resolve_home
from tasks.core.run_history import task_run_states
from tasks.dataset.report import story_task
from tasks.evaluation.evaluate import (
    EVALUATION_FILES,
    EVALUATION_PICTURES,
    evaluate_task_for,
    evaluation_artifacts_task,
)
from tasks.ingest.ingest import source_fingerprint_task
from tasks.nightly.alerts import notify_on_completion, notify_on_failure
from tasks.nightly.changes import changes_task, save_index_task
from tasks.nightly.followups import (
    PRELABEL,
    PUSH,
    followup_failed_task,
    pending_followups,
    push_champion_task,
    set_pending,
)
from tasks.nightly.landing import started_by_line, what_started
from tasks.nightly.liveness import holding_night_slot
from tasks.nightly.promotion import (
    Candidate,
    current_champion_task,
    promote_task,
    record_success_task,
    what_is_new_task,
    work_dir_lock,
)
from tasks.nightly.registry import (
    RegistryTarget,
    config_params,
    embedded_tracking_uri,
    register_task,
)
from tasks.nightly.retention import retention_task
from tasks.nightly.runners import prep_task_runner
from tasks.nightly.status import deployment_name
from tasks.predict.folder import line_settings
from tasks.predict.prelabel import prelabel_task
from tasks.predict.queue import class_counts_of, queue_task
from tasks.predict.suspects import suspects_task
from tasks.serving.night_monitor import serving_monitor_task
from tasks.training.run_folder import run_identity
from tasks.training.train import (
    check_train_config_task,
    train_task_for,
    warm_start_config,
    warm_start_train_config,
)


@flow(name="retrain", log_prints=True, on_failure=[notify_on_failure], on_crashed=[notify_on_failure],
      on_completion=[notify_on_completion])
def retrain(config_path: str, work_dir: str, home: str | None = None,
            max_steps: int | None = None, landed: dict | None = None):
    """The nightly run: retrain when new images landed, promote only a better model.
    `landed`: the landing event that started it (the deployment's trigger fills it in)."""
    config = load_config(config_path)
    started_by = what_started(landed, FlowRunContext.get().flow_run.auto_scheduled)
    get_run_logger().info(started_by_line(started_by))
    where = resolve_home(home)
    work = Path(work_dir).resolve()
    registry = RegistryTarget(
        tracking_uri=config.registry.tracking_uri or embedded_tracking_uri(where.mlflow),
        model_name=config.model_name)
    run = FlowRunContext.get().flow_run
    one_at_a_time = (holding_night_slot(deployment_name(config)) if run.deployment_id
                     else nullcontext())  # `defectflow run`: the work dir's lock alone
    with one_at_a_time, work_dir_lock(work) as ours:
        if not ours:
            return Cancelled(message="another retrain holds this work dir: skipped, not waited")
        check_train_config_task(model_config=config.model, train_config=config.train)
        if (work / "monitoring").is_dir():  # a model server of the line answered: what it saw
            serving_monitor_task(work_dir=str(work), registry=registry, config=config,
                                 return_state=True)  # never fails the night
        source = source_fingerprint_task(source=config.source)
        if not what_is_new_task(work_dir=str(work), source_fingerprint=source):
            left = pending_followups(work)
            if left:  # what an earlier night could not finish, with tonight's champion
                champion = current_champion_task(registry=registry,
                                                 download_to=str(work / "champion"))
                after_the_night(config, registry, work, left, champion)
            return Completed(message="no new images: nothing to retrain")

        prepared = prepare.with_options(task_runner=prep_task_runner(config.prep))(
            config_path=config_path, out_dir=str(work / "prepared"), home=str(where.root),
            return_state=True)
        if prepared.is_failed() and (prepared.message or "").startswith(SOURCE_UNREADABLE):
            return Failed(message=prepared.message)  # one line for the log and the alert
        report = prepared.result()
        story_task(report=report)
        dataset = str(work / "prepared" / "dataset")
        fingerprint = report["fingerprint"]
        changes, index = changes_task(work_dir=str(work), dataset_dir=dataset)
        champion = current_champion_task(registry=registry, download_to=str(work / "champion"))
        model = warm_start_config(config.model, config.train, champion)
        train = warm_start_train_config(config.train, champion)
        identity = run_identity(fingerprint, model, train, max_steps)
        run_dir = work / "runs" / f"{fingerprint[:12]}-{identity[:8]}"
        trained = train_task_for(run_dir, identity, train)(
            dataset_dir=dataset, fingerprint=fingerprint, model_config=model,
            train_config=train, out_dir=str(run_dir), max_steps=max_steps,
            identity=identity, tiling=config.tiling)

        def evaluate_on_test(model_dir: str, model_hash: str, out_dir: Path, role: str) -> dict:
            metrics = evaluate_task_for(out_dir, config.evaluate)(
                model=config.model, dataset_dir=dataset, fingerprint=fingerprint,
                model_dir=model_dir, model_hash=model_hash, out_dir=str(out_dir),
                split="test", labels=config.labels, num_beams=config.evaluate.num_beams,
                batch_size=config.evaluate.batch_size, tiling=config.tiling,
                timeout_minutes=config.evaluate.timeout_minutes)
            pictures = [str(out_dir / name) for name in EVALUATION_PICTURES]
            if role == "challenger":
                pictures.append(str(run_dir / "loss_curve.png"))
            evaluation_artifacts_task(metrics=metrics, role=role, pictures=pictures)
            return metrics

        challenger_files = folder_hash(trained["model_dir"])  # the evaluate key and a version tag
        metrics = evaluate_on_test(trained["model_dir"], challenger_files, run_dir / "eval",
                                   "challenger")
        champion_metrics = None if champion is None else evaluate_on_test(
            champion["model_dir"], folder_hash(champion["model_dir"]),
            run_dir / f"champion-v{champion['version']}-eval", "champion")
        suspects = suspect_labels_tonight(config, dataset, champion, changes, run_dir)
        lineage = {"dataset_fingerprint": fingerprint,
                   "hub_revision": report["dataset"]["hub_revision"] or "",
                   "prefect_flow_run_id": str(runtime.flow_run.id),
                   "config_hash": config.section_hash(), "code_version": code_version(),
                   "base_checkpoint": model.checkpoint, "model_files": challenger_files}
        version = register_task(
            registry=registry, artifact_root=str(where.mlflow / "artifacts"),
            model_dir=trained["model_dir"], metrics=metrics, lineage=lineage,
            files=[str(run_dir / "eval" / name) for name in EVALUATION_FILES]
            + [str(run_dir / "loss_curve.png")],
            curves=trained.get("curves"), params=config_params(config))
        decision = promote_task(
            registry=registry, config=config.registry, metric=config.promotion_metric,
            challenger=Candidate(version=version["version"], metrics=metrics,
                                 model_dir=trained["model_dir"]),
            champion=None if champion is None else Candidate(
                version=champion["version"], metrics=champion_metrics,
                model_dir=champion["model_dir"]), work_dir=str(work))
        save_index_task(work_dir=str(work), index=index)  # tomorrow's "since last night"
        record_success_task(work_dir=str(work), info={
            "source_fingerprint": source, "dataset_fingerprint": fingerprint,
            "model_version": version["version"]})
        # The night is recorded: what follows may fail without undoing it.
        tonight = {**pending_followups(work)}
        if decision["promoted"]:
            champion = {"version": version["version"], "model_dir": trained["model_dir"]}
            if config.registry.hub_repo:
                tonight[PUSH] = {"version": version["version"], "metrics": metrics,
                                 "lineage": lineage}
        if config.prelabel is not None:
            tonight[PRELABEL] = {}
        followups = after_the_night(config, registry, work, tonight, champion)
        retention = retention_task(  # last, and a failure there never fails the night
            config=config, work_dir=str(work), home=str(where.root), registry=registry,
            cutoff=runtime.flow_run.scheduled_start_time.timestamp(), return_state=True)
        return {"started_by": started_by, "report": report, "train": trained, "metrics": metrics,
                "champion_metrics": champion_metrics, "version": version, "decision": decision,
                "changes": changes, "suspects": suspects,
                "prelabels": followups.get(PRELABEL, {}).get("result"),
                "followups": {name: "done" if outcome["done"] else f"failed: {outcome['error']}"
                              for name, outcome in followups.items()},
                "tracking_uri": registry.tracking_uri, "source_fingerprint": source,
                "retention": retention.result() if retention.is_completed()
                else {"error": retention.message or retention.name}}


def after_the_night(config: DatasetConfig, registry: RegistryTarget, work: Path,
                    followups: dict[str, dict], champion: dict | None) -> dict[str, dict]:
    """The steps after a recorded decision, with `champion` (version, model folder): each one
    that fails is logged, alerted and left for the next night, never raised (the night stands)."""
    outcomes: dict[str, dict] = {}
    for name, needs in followups.items():
        wanted = config.registry.hub_repo if name == PUSH else config.prelabel
        if wanted is None or champion is None or (name == PUSH
                                                  and needs["version"] != champion["version"]):
            set_pending(work, name, None)  # turned off, no champion yet, or a newer one came
            continue
        if name == PUSH:
            state = push_champion_task(registry=registry, config=config.registry,
                                       version=needs["version"], model_dir=champion["model_dir"],
                                       metrics=needs["metrics"], lineage=needs["lineage"],
                                       return_state=True)
        else:
            settings = line_settings(champion["model_dir"], config, config.prelabel.threshold)
            state = prelabel_task(
                inbox=str(config.prelabel.inbox), model_dir=champion["model_dir"],
                settings=settings, model_version=f"{config.model_name} v{champion['version']}",
                return_state=True)
        if state.is_completed():
            set_pending(work, name, None)
            outcomes[name] = {"done": True, "result": state.result()}
            if name == PRELABEL:  # and which inbox images to label first (a gallery artifact)
                queued = queue_task(inbox=str(config.prelabel.inbox),
                                    model_dir=champion["model_dir"], out_dir=str(work / "queue"),
                                    settings=settings, class_counts=class_counts_of(work),
                                    return_state=True)
                outcomes[name]["result"]["queue"] = queued.result() if queued.is_completed() \
                    else {"error": queued.message or queued.name}
        else:
            followup_failed_task(work_dir=str(work), name=name, needs=needs,
                                 error=state.message or state.name, notify=config.notify)
            outcomes[name] = {"done": False, "error": state.message or state.name}
    return outcomes


def suspect_labels_tonight(config: DatasetConfig, dataset: str, champion: dict | None,
                           changes: dict, run_dir: Path) -> dict | None:
    """Last night's champion on the images that landed or changed since: labels it disagrees
    with (it never trained on these, so it does not simply agree with them). The cost follows
    what is new; a failure is logged, the night goes on. None on a first night or without a
    champion."""
    if champion is None or not changes.get("changed_ids"):
        return None
    state = suspects_task(
        dataset_dir=dataset, model_dir=champion["model_dir"], out_dir=str(run_dir / "suspects"),
        settings=line_settings(champion["model_dir"], config),
        only=changes["changed_ids"], return_state=True)
    if state.is_completed():
        return {key: value for key, value in state.result().items() if key != "suspects"}
    get_run_logger().warning("suspect labels: %s", state.message or state.name)
    return {"error": state.message or state.name}


def run_retrain(config_path: Path, work_dir: Path, home: str | None,
                max_steps: int | None = None) -> dict:
    """Run the flow once: its final state, its summary (when it completed with one) and the
    final state of every task run, its subflows' included."""
    state = retrain(str(config_path.resolve()), str(work_dir.resolve()), home, max_steps,
                    return_state=True)
    states = task_run_states(state.state_details.flow_run_id)
    summary = state.result(raise_on_failure=True) if state.is_completed() else None
    return {"state": state, "summary": summary if isinstance(summary, dict) else None,
            "task_states": states}
