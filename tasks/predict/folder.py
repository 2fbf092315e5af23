"""A trained detector on a folder of new images: COCO predictions, LabelImg XMLs to correct,
overlays to look at, and a report of every file that could not be used.

    OUT/predictions.json      COCO: images, categories, annotations (bbox [x, y, w, h], score),
                              every box the model gave, whatever its confidence
    OUT/labelimg/<stem>.xml   Pascal VOC as LabelImg writes it, boxes at or above the threshold;
                              one already there (a person's corrections) is kept as it is
                              unless `overwrite`
    OUT/overlays/<stem>.jpg   the image with those boxes, labels and confidences drawn
    OUT/predict_report.json   counts (found = predicted + quarantined), each quarantined file,
                              the XMLs written and those kept (`kept_existing`)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import task
from tqdm.auto import tqdm

from tasks.core.config import DatasetConfig, ImageLimits, TilingConfig
from tasks.core.records import Rejection
from tasks.images.overlay import draw_boxes
from tasks.ingest.labelimg_writer import labelimg_xml, save_xml
from tasks.predict.inputs import ImageInput, LoadedImage, list_inputs, load_input
from tasks.scoring.generation import (
    DECODER_POSITIONS,
    DEFAULT_THRESHOLD,
    Prediction,
    predict_batch,
    predict_sliced,
)
from tasks.scoring.threshold import at_or_above
from tasks.training.models import model_class_thresholds, model_threshold, read_model_facts


@dataclass
class PredictSettings:
    threshold: float = DEFAULT_THRESHOLD
    class_thresholds: dict[str, float] = field(default_factory=dict)  # a class's own, if chosen
    batch_size: int = 8
    num_beams: int = 1
    max_new_tokens: int = DECODER_POSITIONS
    labels: list[str] | None = None  # None: keep every class the model names
    tiling: TilingConfig | None = None
    max_pixels: int = ImageLimits().max_pixels


def settings_for(model_dir: str | Path, threshold: float | None = None, batch_size: int = 8,
                 num_beams: int = 1, labels: list[str] | None = None,
                 tiling: TilingConfig | None = None, max_pixels: int | None = None) -> PredictSettings:
    """What the model folder says it learnt (classes, answer length, tiles, the threshold its
    validation chose) comes first; the config's `labels` and `tiling` stand in for a folder that
    does not say; a threshold given here wins over the model's, its classes' own included."""
    facts = read_model_facts(model_dir)
    return PredictSettings(
        threshold=threshold if threshold is not None else model_threshold(facts),
        class_thresholds={} if threshold is not None else model_class_thresholds(facts),
        batch_size=batch_size, num_beams=num_beams,
        max_new_tokens=facts.get("max_new_tokens") or DECODER_POSITIONS,
        labels=facts.get("labels") or labels,
        tiling=TilingConfig(**facts["tiling"]) if facts.get("tiling") else tiling,
        max_pixels=max_pixels or ImageLimits().max_pixels)


def line_settings(model_dir: str | Path, config: DatasetConfig | None,
                  threshold: float | None = None, batch_size: int | None = None,
                  num_beams: int | None = None) -> PredictSettings:
    """`settings_for` with what a line's config says: its labels, tiling and image limit, and
    (unless given) its evaluation's batch size and beams."""
    return settings_for(model_dir, threshold,
                        batch_size or (config.evaluate.batch_size if config else 8),
                        num_beams or (config.evaluate.num_beams if config else 1),
                        config.labels if config else None, config.tiling if config else None,
                        config.images.max_pixels if config else None)


def predict_loaded(model, processor, images: list[LoadedImage],
                   settings: PredictSettings) -> list[Prediction]:
    """One generation per image, batched. A model trained on tiles sees an image larger than a
    tile through tiles when its whole-image answer was cut short (too many defects for one
    answer), or always with `tiling.all_images`."""
    labels = set(settings.labels) if settings.labels is not None else None
    tiling = settings.tiling

    def larger(loaded: LoadedImage) -> bool:
        return tiling is not None and max(loaded.image.size) > tiling.size

    def sliced(loaded: LoadedImage) -> Prediction:
        return predict_sliced(model, processor, loaded.image, labels, tiling.size, tiling.overlap,
                              settings.num_beams, settings.max_new_tokens, settings.batch_size)

    always = [larger(loaded) and tiling.all_images for loaded in images]
    whole = [loaded.image for loaded, tiled in zip(images, always, strict=True) if not tiled]
    answers = iter(predict_batch(model, processor, whole, labels, settings.num_beams,
                                 settings.max_new_tokens) if whole else [])
    results = []
    for loaded, tiled in zip(images, always, strict=True):
        prediction = sliced(loaded) if tiled else next(answers)
        if not tiled and prediction.truncated and larger(loaded):
            prediction = sliced(loaded)
            prediction.text = "(tiles) " + prediction.text
        results.append(prediction)
    return results


def predict_stream(inputs: list[ImageInput], model, processor, settings: PredictSettings,
                   rejected: list[Rejection], description: str = "predict"
                   ) -> Iterator[tuple[LoadedImage, Prediction]]:
    """(image, prediction) for every input that decodes, batch by batch (only one batch of
    pixels in memory); the others are added to `rejected`."""
    with tqdm(total=len(inputs), desc=description, unit="img") as bar:
        for start in range(0, len(inputs), settings.batch_size):
            loaded = []
            for image in inputs[start:start + settings.batch_size]:
                result = load_input(image, settings.max_pixels)
                (rejected if isinstance(result, Rejection) else loaded).append(result)
            if loaded:
                yield from zip(loaded, predict_loaded(model, processor, loaded, settings),
                               strict=True)
            bar.update(len(inputs[start:start + settings.batch_size]))


def kept_boxes(prediction: Prediction, settings: PredictSettings) -> tuple[list, list[float]]:
    return at_or_above(prediction.boxes, prediction.scores, settings.threshold,
                       settings.class_thresholds)


@dataclass
class PredictionFiles:
    """Writes the outputs of one image at a time; `finish` writes the COCO file and the report.
    An XML already in OUT/labelimg (a person corrected it in LabelImg) is kept, byte for byte,
    unless `overwrite`; predictions.json and the overlay still show this run's answer."""

    out: Path
    settings: PredictSettings
    overwrite: bool = False
    kept_existing: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    annotations: list[tuple[int, str, list[float], float]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    per_class: Counter = field(default_factory=Counter)

    def add(self, loaded: LoadedImage, prediction: Prediction) -> None:
        image_id = len(self.images) + 1
        width, height = loaded.image.size
        self.images.append({"id": image_id, "file_name": loaded.source.item,
                            "width": width, "height": height})
        for box, score in zip(prediction.boxes, prediction.scores, strict=True):
            self.annotations.append((image_id, box.label,
                                     [box.x1, box.y1, box.width, box.height], score))
        boxes, scores = kept_boxes(prediction, self.settings)
        self.per_class.update(box.label for box in boxes)
        self.counts.update(parse_failures=prediction.parse_failures,
                           truncated_outputs=int(prediction.truncated),
                           unknown_labels=len(prediction.unknown_labels))
        xml = self.out / "labelimg" / f"{loaded.source.stem}.xml"
        written = save_xml(xml, labelimg_xml(loaded.source.path.resolve(), width, height,
                                             loaded.depth, boxes, verified=False),
                           self.overwrite)
        self.counts.update(xmls_written=int(written))
        if not written:
            self.kept_existing.append(str(xml.relative_to(self.out / "labelimg")))
        overlay = self.out / "overlays" / f"{loaded.source.stem}.jpg"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        draw_boxes(loaded.image, boxes, scores, self.settings.labels or sorted(self.per_class)
                   ).save(overlay, quality=90)

    def finish(self, rejected: list[Rejection], model: str) -> dict:
        names = list(self.settings.labels or sorted({label for _, label, _, _ in self.annotations}))
        names += sorted({label for _, label, _, _ in self.annotations} - set(names))
        category = {name: i for i, name in enumerate(names, start=1)}
        coco = {"images": self.images,
                "categories": [{"id": i, "name": name} for name, i in category.items()],
                "annotations": [{"id": n, "image_id": image_id, "category_id": category[label],
                                 "bbox": [round(v, 2) for v in bbox], "area": bbox[2] * bbox[3],
                                 "score": round(score, 4), "iscrowd": 0}
                                for n, (image_id, label, bbox, score)
                                in enumerate(self.annotations, start=1)]}
        (self.out / "predictions.json").write_text(json.dumps(coco))
        report = {
            "model": model, "threshold": self.settings.threshold,
            "class_thresholds": dict(self.settings.class_thresholds),
            "found": len(self.images) + len(rejected), "predicted": len(self.images),
            "quarantined": len(rejected),
            "quarantine_reasons": dict(Counter(r.reason for r in rejected).most_common()),
            "boxes": sum(self.per_class.values()), "boxes_per_class": dict(self.per_class),
            "boxes_below_threshold": len(self.annotations) - sum(self.per_class.values()),
            "xmls_written": 0, **dict(self.counts), "overwrite": self.overwrite,
            "kept_existing": len(self.kept_existing), "kept_existing_files": self.kept_existing,
            "settings": {**asdict(self.settings), "tiling": (
                self.settings.tiling.model_dump() if self.settings.tiling else None)},
            "quarantined_files": [r.model_dump() for r in rejected],
        }
        (self.out / "predict_report.json").write_text(json.dumps(report, indent=1,
                                                                 ensure_ascii=False))
        return report


def predict_images(images_dir: str | Path, out_dir: str | Path, model, processor,
                   settings: PredictSettings, model_name: str = "", overwrite: bool = False) -> dict:
    """Predict every image under `images_dir` and write OUT's files; returns the report. An
    existing OUT/labelimg XML is replaced only with `overwrite`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs, rejected = list_inputs(Path(images_dir))
    files = PredictionFiles(out, settings, overwrite)
    for loaded, prediction in predict_stream(inputs, model, processor, settings, rejected):
        files.add(loaded, prediction)
    return files.finish(rejected, model_name)


def predict_step(images_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
                 settings: PredictSettings, overwrite: bool = False) -> dict:
    from tasks.training.models import load_finetuned_detector

    processor, model = load_finetuned_detector(model_dir)
    return predict_images(images_dir, out_dir, model, processor, settings, str(model_dir),
                          overwrite)


@task(name="predict")
def predict_task(images_dir: str, model_dir: str, out_dir: str, settings: PredictSettings,
                 overwrite: bool = False) -> dict:
    """Never cached: the same folder holds new photos tomorrow."""
    return predict_step(images_dir, model_dir, out_dir, settings, overwrite)
