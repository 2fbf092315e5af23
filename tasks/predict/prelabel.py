"""Pre-labels for tomorrow: the champion writes a LabelImg XML beside each inbox image that has
none, so a person corrects boxes instead of drawing them. A person's XML is never overwritten, and
there is no option to: the file appears whole and only where none exists (`save_xml`, the
same writer `predict` uses without `--overwrite`), so not even a race with LabelImg's own save
can lose one."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.core.logs import run_logger
from tasks.core.records import Rejection
from tasks.ingest.labelimg_writer import labelimg_xml, save_xml
from tasks.predict.folder import PredictSettings, kept_boxes, predict_stream
from tasks.predict.inputs import list_inputs


def xml_beside(path: Path) -> Path:
    return path.with_suffix(".xml")


def prelabel_inbox(inbox: str | Path, model, processor, settings: PredictSettings) -> dict:
    """Write XMLs for the inbox images without one; returns the counts."""
    inbox = Path(inbox)
    inputs, rejected = list_inputs(inbox) if inbox.is_dir() else ([], [])
    unlabelled = [image for image in inputs if not xml_beside(image.path).exists()]
    written = boxes = 0
    lost_races: list[str] = []
    for loaded, prediction in predict_stream(unlabelled, model, processor, settings, rejected,
                                             "pre-label"):
        kept, _ = kept_boxes(prediction, settings)
        width, height = loaded.image.size
        if not save_xml(xml_beside(loaded.source.path),
                        labelimg_xml(loaded.source.path.resolve(), width, height, loaded.depth,
                                     kept), overwrite=False):
            lost_races.append(loaded.source.item)  # a person saved one while the model thought
            continue
        written += 1
        boxes += len(kept)
    return {"inbox": str(inbox), "images": len(inputs), "already_labelled": len(inputs) - len(unlabelled),
            "written": written, "boxes": boxes, "kept_human_xml": lost_races,
            "quarantined": [r.model_dump() for r in rejected if isinstance(r, Rejection)]}


@task(name="prelabel")
def prelabel_task(inbox: str, model_dir: str, settings: PredictSettings) -> dict:
    """Pre-label the inbox with the model in `model_dir` (tonight's champion)."""
    from tasks.training.models import load_finetuned_detector

    processor, model = load_finetuned_detector(model_dir)
    result = prelabel_inbox(inbox, model, processor, settings)
    own = f", per class {settings.class_thresholds}" if settings.class_thresholds else ""
    run_logger().info(f"pre-labelled {result['written']} inbox images ({result['boxes']} boxes "
                      f"at confidence >= {settings.threshold}{own}); {result['already_labelled']} "
                      f"already had an XML, left as they were; {len(result['quarantined'])} "
                      "quarantined")
    return result
