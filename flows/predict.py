"""predict = resolve the model (a folder or the registry's champion) -> predict a folder of
images -> COCO, LabelImg XMLs, overlays and a report (one Prefect run, never cached)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.core.config import DatasetConfig
from tasks.core.home import resolve_home
from tasks.nightly.registry import embedded_tracking_uri
from tasks.predict.folder import line_settings, predict_task
from tasks.predict.model import resolve_model
from tasks.predict.queue import queue_task
from tasks.predict.suspects import suspects_task


def model_folder(model: str, out_dir: Path, config: DatasetConfig | None, home: str | None) -> Path:
    """The model folder `--model` names (a champion is downloaded into OUT/model/). Raises
    ModelNotFound with a message for the person at the keyboard."""
    tracking_uri = None if config is None else (
        config.registry.tracking_uri or embedded_tracking_uri(resolve_home(home).mlflow))
    return resolve_model(model, tracking_uri, config.model_name if config else None,
                         out_dir / "model")


@flow(name="predict", log_prints=True)
def predict(images_dir: str, model_dir: str, out_dir: str, threshold: float | None, batch_size: int,
            num_beams: int = 1, config: DatasetConfig | None = None,
            overwrite: bool = False) -> dict:
    """Apply a trained detector to every image of a folder (an XML already in OUT/labelimg is
    kept unless `overwrite`)."""
    settings = line_settings(model_dir, config, threshold, batch_size, num_beams)
    return predict_task(images_dir=images_dir, model_dir=model_dir, out_dir=out_dir,
                        settings=settings, overwrite=overwrite)


@flow(name="queue", log_prints=True)
def queue(inbox: str, model_dir: str, out_dir: str, config: DatasetConfig | None = None,
          class_counts: dict[str, int] | None = None, batch_size: int = 8) -> dict:
    """Rank the inbox images no person verified yet by what labelling them should teach the
    model: queue.csv and a gallery (the run's image artifact)."""
    settings = line_settings(model_dir, config, None, batch_size, 1)
    return queue_task(inbox=inbox, model_dir=model_dir, out_dir=out_dir, settings=settings,
                      class_counts=class_counts)


@flow(name="suspects", log_prints=True)
def suspects(dataset_dir: str, model_dir: str, out_dir: str, config: DatasetConfig | None = None,
             batch_size: int = 8) -> dict:
    """The labels of a prepared dataset the model disagrees with: suspects.json, the image and
    the two XMLs of each, a gallery (the run's image artifact)."""
    settings = line_settings(model_dir, config, None, batch_size, 1)
    return suspects_task(dataset_dir=dataset_dir, model_dir=model_dir, out_dir=out_dir,
                         settings=settings)
