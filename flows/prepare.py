"""prepare = ingest -> images (grayscale policy) -> split -> flip -> loc targets -> publish."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import Failed

from tasks.core import progress
from tasks.core.config import DatasetConfig, load_config
from tasks.core.home import resolve_home
from tasks.core.intermediates import StepStates
from tasks.dataset.augment import augment_task
from tasks.dataset.budget import budget_task
from tasks.dataset.loc_tokens import loc_targets_task
from tasks.dataset.publish import fingerprint_task, publish_task_for
from tasks.dataset.report import report_task
from tasks.dataset.split import split_task
from tasks.images.sample import image_step_config
from tasks.images.shard import process_images_task
from tasks.ingest.ingest import forget_listing, ingest_task, shard_task
from tasks.nightly.runners import prep_threads

SOURCE_UNREADABLE = "source unreadable: "


@flow(name="prepare", log_prints=True, task_runner=prep_threads())
def prepare(config_path: str, out_dir: str, home: str | None = None) -> dict:
    """Turn a labelled image folder into a published Florence-2 `<OD>` dataset. Every step is
    `run_trusted`: a Cached result naming a manifest that is gone is computed again."""
    config: DatasetConfig = load_config(config_path)
    where = resolve_home(home)
    store, manifests = str(where.store), str(where.manifests)
    steps = StepStates()

    ingested = steps.run(ingest_task, source=config.source, rules=config.label_rules,
                           manifests_dir=manifests, labels=config.labels,
                           store_root=store).result()
    forget_listing(config.source)  # (kept for the ingest, which may have come back Cached)
    if ingested.fatal:  # the source cannot be read at all: one line, no traceback
        return Failed(message=SOURCE_UNREADABLE + ingested.fatal)
    shards = steps.run(shard_task, candidates=ingested.candidates,
                         shard_size=config.shard_size, manifests_dir=manifests).result()
    processed = steps.map(process_images_task, "shard", shards,
                            config=image_step_config(config), store_root=store,
                            manifests_dir=manifests)
    shard_outputs = [state.result() for state in processed]
    split = steps.run(split_task, kept=[s.kept for s in shard_outputs], ratios=config.split,
                        manifests_dir=manifests).result()
    budget = steps.run(budget_task, samples=split.samples, budget=config.targets.max_tokens,
                         checkpoint=config.model.checkpoint, manifests_dir=manifests,
                         tiling=config.tiling, store_root=store,
                         max_pixels=config.images.max_pixels,
                         min_box_size=config.images.min_box_size).result()
    augment_state = steps.run(augment_task, manifest=budget.rows, config=config.augment,
                                max_pixels=config.images.max_pixels, store_root=store,
                                manifests_dir=manifests)
    augmented, flips = augment_state.result()
    targets = steps.run(loc_targets_task, manifest=augmented, manifests_dir=manifests,
                          store_root=store).result()
    dataset_dir = str(Path(out_dir).resolve() / "dataset")
    fingerprint = steps.run(fingerprint_task, manifest=targets).result()
    published = steps.run(publish_task_for(dataset_dir, fingerprint), manifest=targets,
                          name=config.name, config=config.publish, out_dir=dataset_dir).result()
    progress.finish()
    # What this run really did: the counters of the steps that ran, not of those Cached.
    ran = [state.name != "Cached" for state in processed] + [augment_state.name != "Cached"]
    work = progress.work_this_run(list(zip([o.counters for o in shard_outputs] + [flips], ran, strict=True)))
    return report_task(
        report_path=str(Path(out_dir) / "prepare_report.json"),
        name=config.name, grayscale_policy=config.grayscale, ingested=ingested,
        shards=shard_outputs, split=split, budget=budget, augmented=flips, published=published,
        work=work, rules=config.label_rules, steps=steps.counts(),
    )


class SourceUnreadable(RuntimeError):
    """The run stopped because its source cannot be read at all (the message says why)."""


def run_prepare(config_path: Path, out_dir: Path, home: str | None) -> tuple[dict, list[tuple[str, str]]]:
    """Run the flow; its report and the final state of every task run, as the flow saw them
    (the report's `prefect_steps`, and the report task, Completed since the flow returned its
    result). Raises SourceUnreadable when the flow stopped on its source."""
    # the home by name: home collection tells this home's prepares from other homes' by it
    state = prepare(str(config_path), str(out_dir), str(resolve_home(home).root), return_state=True)
    if state.is_failed() and (state.message or "").startswith(SOURCE_UNREADABLE):
        raise SourceUnreadable(state.message.removeprefix(SOURCE_UNREADABLE))
    report = state.result()
    return report, [*step_states(report["prefect_steps"]), ("report", "Completed")]


def step_states(counts: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    """{step: {state: task runs}} -> a (step, state) pair per task run."""
    return [(step, name) for step, by_state in counts.items()
            for name, runs in by_state.items() for _ in range(runs)]
