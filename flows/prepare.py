"""prepare = ingest -> images (grayscale policy) -> split -> flip -> loc targets -> publish."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped
from prefect.futures import wait

from tasks import progress
from tasks.augment import augment_task
from tasks.config import DatasetConfig, load_config
from tasks.ingest import ingest_task, make_shards_task
from tasks.loc_tokens import targets_task
from tasks.process import ImageStepConfig, process_shard_task
from tasks.publish import publish_task_for
from tasks.report import report_task
from tasks.split import split_task
from tasks.workdir import resolve_home


@flow(name="prepare", log_prints=True)
def prepare(config_path: str, out_dir: str, home: str | None = None) -> dict:
    """Turn a labelled image folder into a published Florence-2 `<OD>` dataset."""
    config: DatasetConfig = load_config(config_path)
    where = resolve_home(home)
    store, manifests = str(where.store), str(where.manifests)
    progress.reset()

    ingested = ingest_task(config.source, config.labels, manifests)
    shards = make_shards_task(ingested.candidates, config.shard_size, manifests)
    image_step = ImageStepConfig(grayscale=config.grayscale, images=config.images)
    processed = process_shard_task.map(shards, unmapped(image_step), unmapped(store),
                                       unmapped(manifests))
    wait(processed)
    shard_outputs = processed.result()
    split = split_task([s.kept for s in shard_outputs], config.split, manifests)
    augmented, flips = augment_task(split.samples, config.augment, config.images.max_pixels,
                                    store, manifests)
    targets = targets_task(augmented, manifests)
    dataset_dir = str(Path(out_dir).resolve() / "dataset")
    published = publish_task_for(dataset_dir)(targets, config.name, config.publish, dataset_dir)
    progress.finish()
    return report_task(
        str(Path(out_dir) / "prepare_report.json"),
        name=config.name, grayscale_policy=config.grayscale, ingested=ingested,
        shards=shard_outputs, split=split, augmented=flips, published=published,
    )
