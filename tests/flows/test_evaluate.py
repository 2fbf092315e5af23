"""`defectflow evaluate` on a tiny model trained for a few steps, on the session's Prefect server."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import ModelConfig, TrainConfig
from tasks.training.train import train_step
from tests.support import artifacts_of

pytestmark = [pytest.mark.slow, pytest.mark.trains, pytest.mark.usefixtures("prefect_server")]
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
    from prefect.settings import PREFECT_API_URL

    assert f"Prefect server: {PREFECT_API_URL.value()}" in " ".join(result.output.split())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"coco", "per_class", "confusion_matrix", "parse_failures",
                            "unknown_labels", "n_images"}
    assert len(metrics["coco"]["stats"]) == 12 and set(metrics["per_class"]) <= {"patch", "scratch", "spot"}
    assert metrics["confusion_matrix"]["labels"] == ["patch", "scratch", "spot", "background"]
    for picture in ("confusion_matrix.png", "pr_curves.png", "predictions.png"):
        with Image.open(out / picture) as image:
            assert image.width >= 400 and image.height >= 300
    review = json.loads((out / "review" / "review.json").read_text())["images"]
    assert metrics["review"]["images"] == len(review) > 0  # 20 steps: plenty of mistakes
    assert all((out / "review" / path).is_file() for item in review for path in item["files"].values())
    again = runner.invoke(app, ["coco-eval", str(out / "gt.json"), str(out / "dt.json")])
    assert json.loads(again.stdout)["stats"] == metrics["coco"]["stats"]
    # The confusion matrix counts the very boxes COCOeval scored: every true box of gt.json once,
    # in its class's row (matched to a prediction or missed: the background column), and every
    # detection of dt.json at or above the matrix's confidence once, in its class's column.
    gt, dt = (json.loads((out / name).read_text()) for name in ("gt.json", "dt.json"))
    names = {category["id"]: category["name"] for category in gt["categories"]}
    confusion = metrics["confusion_matrix"]
    classes, matrix = confusion["labels"][:-1], confusion["matrix"]
    true_per_class = {label: sum(row) for label, row in zip(classes, matrix, strict=False)}
    assert true_per_class == {label: [names[a["category_id"]] for a in gt["annotations"]].count(label)
                              for label in classes}
    assert sum(true_per_class.values()) == len(gt["annotations"]) > 0
    predicted_per_class = {label: sum(row[i] for row in matrix) for i, label in enumerate(classes)}
    assert predicted_per_class == {
        label: sum(names[d["category_id"]] == label and d["score"] >= confusion["confidence_threshold"]
                   for d in dt) for label in classes}


def test_evaluation_is_published_as_prefect_artifacts_even_when_cached(synthetic_dataset, tmp_path):
    import datasets

    from flows.evaluate import evaluate
    from tasks.core.run_history import task_run_states
    from tasks.training.classifier import image_label

    train_step(synthetic_dataset, tmp_path / "model", ModelConfig(kind="vit", checkpoint="tiny"),
               TrainConfig(lr=1e-3, batch_size=8, eval_steps=10, max_steps=10))
    config = tmp_path / "cfg.yaml"
    config.write_text("name: s\nsource: {format: voc, images: x, annotations: y}\n"
                      "model: {kind: vit, image_label: first}\n")
    args = (str(config), str(synthetic_dataset), str(tmp_path / "model" / "model"),
            str(tmp_path / "eval"), "train")
    first = evaluate(*args, return_state=True)
    metrics = first.result()
    # The true class of an image is its first box's class, as the config says (some of these
    # images have a first box whose class is not their majority class).
    rows = datasets.load_dataset(str(synthetic_dataset))["train"]
    labels = [row for row, aug in zip(rows["labels"], rows["augmentation"], strict=True)
              if aug == "none"]
    truth = [image_label(row, "first", "passed") for row in labels]
    assert truth != [image_label(row, "majority", "passed") for row in labels]
    confusion = metrics["confusion_matrix"]
    per_class = dict(zip(confusion["labels"], map(sum, confusion["matrix"]), strict=True))
    assert {k: v for k, v in per_class.items() if v} == {k: truth.count(k) for k in set(truth)}
    diagonal = sum(confusion["matrix"][i][i] for i in range(len(per_class)))
    assert metrics["accuracy"] == diagonal / len(truth)
    for state in (first, evaluate(*args, return_state=True)):  # the second evaluation is Cached
        artifacts = artifacts_of(state.state_details.flow_run_id)
        assert artifacts["model-metrics"].type == "table", artifacts
        assert artifacts["model-evaluation"].type == "markdown"
        assert "Confusion matrix" in artifacts["model-evaluation"].data
        picture = artifacts["model-confusion-matrix"]  # the PNG, shown in the UI
        assert picture.type == "image" and picture.data.startswith("data:image/png;base64,")
    states = dict(task_run_states(state.state_details.flow_run_id))
    assert [s for name, s in states.items() if name.startswith("evaluate-")] == ["Cached"]
