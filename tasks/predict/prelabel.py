"""Pre-labels for tomorrow: the champion writes a LabelImg XML beside each inbox image that has
none, so a person corrects boxes instead of drawing them. A person's XML is never overwritten, and
there is no option to: the file appears whole and only where none exists (`save_xml`, the
same writer `predict` uses without `--overwrite`), so not even a race with LabelImg's own save
can lose one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import task

from tasks.core.logs import run_logger
from tasks.core.records import Rejection
from tasks.ingest.labelimg_writer import labelimg_xml, save_xml
from tasks.predict.folder import PredictSettings, kept_boxes, predict_stream
from tasks.predict.inputs import list_inputs


def xml_beside(path: Path) -> Path:
    return path.with_suffix(".xml")


SIDECAR = ".prelabel.json"  # beside the XML: LabelImg rewrites the whole XML when it saves


def sidecar_beside(path: Path) -> Path:
    return path.with_suffix(SIDECAR)


def write_sidecar(image: Path, model_version: str | None, settings: PredictSettings,
                  boxes: list, scores: list[float], extra: dict | None = None) -> None:
    """What wrote a pre-label: the model version, its thresholds and each box's score (in the
    XML's order), written whole (a temporary file renamed)."""
    record = {"image": image.name, "xml": xml_beside(image).name, "model_version": model_version,
              "threshold": settings.threshold, "class_thresholds": settings.class_thresholds,
              "boxes": [{"label": box.label, "box": [box.x1, box.y1, box.x2, box.y2],
                         "score": round(score, 6)} for box, score in zip(boxes, scores, strict=True)],
              **(extra or {})}
    path = sidecar_beside(image)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)


def prelabel_inbox(inbox: str | Path, model, processor, settings: PredictSettings,
                   model_version: str | None = None) -> dict:
    """Write XMLs for the inbox images without one (marked `verified="no"`: a model's guess),
    each with a sidecar naming `model_version` and its boxes' scores; returns the counts."""
    inbox = Path(inbox)
    inputs, rejected = list_inputs(inbox) if inbox.is_dir() else ([], [])
    unlabelled = [image for image in inputs if not xml_beside(image.path).exists()]
    written = boxes = 0
    lost_races: list[str] = []
    for loaded, prediction in predict_stream(unlabelled, model, processor, settings, rejected,
                                             "pre-label"):
        kept, scores = kept_boxes(prediction, settings)
        width, height = loaded.image.size
        if not save_xml(xml_beside(loaded.source.path),
                        labelimg_xml(loaded.source.path.resolve(), width, height, loaded.depth,
                                     kept, verified=False), overwrite=False):
            lost_races.append(loaded.source.item)  # a person saved one while the model thought
            continue
        write_sidecar(loaded.source.path, model_version, settings, kept, scores)
        written += 1
        boxes += len(kept)
    return {"inbox": str(inbox), "images": len(inputs), "already_labelled": len(inputs) - len(unlabelled),
            "written": written, "boxes": boxes, "kept_human_xml": lost_races,
            "quarantined": [r.model_dump() for r in rejected if isinstance(r, Rejection)]}


@task(name="prelabel")
def prelabel_task(inbox: str, model_dir: str, settings: PredictSettings,
                  model_version: str | None = None) -> dict:
    """Pre-label the inbox with the model in `model_dir` (tonight's champion, `model_version`
    in the registry)."""
    from tasks.training.models import load_finetuned_detector

    processor, model = load_finetuned_detector(model_dir)
    result = prelabel_inbox(inbox, model, processor, settings, model_version)
    own = ", ".join(f"{label} {value:.3g}" for label, value in settings.class_thresholds.items())
    own = f"; per class {own}" if own else ""
    run_logger().info(f"pre-labelled {result['written']} inbox images ({result['boxes']} boxes "
                      f"at confidence >= {settings.threshold:.3g}{own}); {result['already_labelled']} "
                      f"already had an XML, left as they were; {len(result['quarantined'])} "
                      "quarantined")
    return result
