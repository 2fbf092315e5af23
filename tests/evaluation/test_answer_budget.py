"""Generation is sized by what the model was taught (its folder's facts), never by test labels."""

import json
import shutil

import datasets
import pytest

from tasks.evaluation.evaluate import evaluate_detector
from tasks.training.models import MODEL_FACTS

pytestmark = pytest.mark.slow


def test_the_evaluation_generates_as_many_tokens_as_the_model_learnt_not_as_test_labels_need(
        synthetic_dataset, tiny_florence, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_florence, model_dir)
    taught = 23  # a budget no split's targets give: the test split's would be longer
    (model_dir / MODEL_FACTS).write_text(json.dumps({
        "labels": ["patch", "scratch", "spot"], "max_new_tokens": taught, "tiling": None,
        "threshold": None}))
    test_targets = datasets.load_dataset(str(synthetic_dataset), split="test")["target"]
    assert max(len(target) for target in test_targets) > taught  # characters: tokens are more

    metrics = evaluate_detector(synthetic_dataset, model_dir, tmp_path / "eval", split="test",
                                batch_size=8)
    assert metrics["max_new_tokens"] == taught
