"""`defectflow evaluate` on a tiny model trained for a few steps, on the session's Prefect server."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import ModelConfig, TrainConfig
from tasks.training.train import train_step

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()


def test_evaluate_writes_metrics_and_pictures_that_agree_with_coco_eval(synthetic_dataset, tmp_path):
    train_step(synthetic_dataset, tmp_path / "model", ModelConfig(checkpoint="tiny", lora=None),
             TrainConfig(lr=2e-3, batch_size=8, eval_steps=10, max_steps=20))
    config = tmp_path / "cfg.yaml"
    config.write_text("name: s\nsource: {format: voc, images: x, annotations: y}\n"
                      "labels: [patch, scratch, spot]\n")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(config), "--dataset", str(synthetic_dataset),
                                 "--model", str(tmp_path / "model" / "model"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"coco", "per_class", "confusion_matrix", "parse_failures",
                            "unknown_labels", "n_images"}
    assert len(metrics["coco"]["stats"]) == 12 and set(metrics["per_class"]) <= {"patch", "scratch", "spot"}
    assert metrics["confusion_matrix"]["labels"] == ["patch", "scratch", "spot", "background"]
    for picture in ("confusion_matrix.png", "pr_curves.png", "predictions.png"):
        with Image.open(out / picture) as image:
            assert image.width >= 400 and image.height >= 300
    again = runner.invoke(app, ["coco-eval", str(out / "gt.json"), str(out / "dt.json")])
    assert json.loads(again.stdout)["stats"] == metrics["coco"]["stats"]
    truth_boxes = sum(row[-1] for row in metrics["confusion_matrix"]["matrix"][:-1])
    assert truth_boxes <= len(json.loads((out / "gt.json").read_text())["annotations"])


def test_evaluation_is_published_as_prefect_artifacts(synthetic_dataset, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.evaluate import evaluate

    train_step(synthetic_dataset, tmp_path / "model", ModelConfig(kind="vit", checkpoint="tiny"),
             TrainConfig(lr=1e-3, batch_size=8, eval_steps=10, max_steps=10))
    config = tmp_path / "cfg.yaml"
    config.write_text("name: s\nsource: {format: voc, images: x, annotations: y}\nmodel: {kind: vit}\n")
    metrics = evaluate(str(config), str(synthetic_dataset), str(tmp_path / "model" / "model"),
                       str(tmp_path / "eval"))
    assert 0 <= metrics["accuracy"] <= 1 and "per_class" in metrics
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["metrics", "evaluation"])),
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC, limit=20, offset=0)
    kinds = {a.key: a.type for a in artifacts}
    assert kinds.get("metrics") == "table" and kinds.get("evaluation") == "markdown"
    markdown = next(a for a in artifacts if a.key == "evaluation").data
    assert "Confusion matrix" in markdown and "accuracy" in markdown
