"""mAP (checked against the COCO API's published numbers), confusion matrices, predictions."""

import contextlib
import io
import json
import math

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.records import Box
from tasks.scoring.coco import (
    CocoInputError,
    coco_detections,
    coco_evaluate,
    coco_ground_truth,
    detection_confusion,
)
from tasks.scoring.generation import boxes_from_tokens
from tests.support import scripted_step_scores, shared_data

runner = CliRunner()
VAL2014 = "faster_coco_eval_tests/tests/dataset/cocoapi/instances_val2014_100.json"
CASES = {
    ("cocoapi_val2014_fake100", "bbox"): (VAL2014,
                                          "cocoapi_results/results/instances_val2014_fakebbox100_results.json"),
    ("cocoapi_val2014_fake100", "segm"): (VAL2014,
                                          "cocoapi_results/results/instances_val2014_fakesegm100_results.json"),
    ("detectron2_case", "bbox"): ("detectron2_case/gt.json", "detectron2_case/dt.json"),
    ("detectron2_case", "segm"): ("detectron2_case/gt.json", "detectron2_case/dt.json"),
}


@pytest.mark.parametrize(("case", "iou_type"), sorted(CASES))
def test_coco_eval_command_reproduces_the_published_numbers(case, iou_type):
    root = shared_data("cocoeval_ref")
    gt, dt = CASES[(case, iou_type)]
    result = runner.invoke(app, ["coco-eval", str(root / gt), str(root / dt), "--iou-type", iou_type])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)["stats"]
    expected = json.loads((root / "expected_stats.json").read_text())[case][iou_type]
    assert len(stats) == 12
    assert all(abs(a - b) <= 1e-9 for a, b in zip(stats, expected, strict=True)), (stats, expected)


def test_mixed_string_and_int_image_ids_end_in_one_line_naming_the_problem():
    root = shared_data("cocoeval_ref") / "faster_coco_eval_tests" / "tests" / "dataset"
    result = runner.invoke(app, ["coco-eval", str(root / "gt_ignore_test.json"),
                                 str(root / "dt_ignore_test.json")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "image ids mix" in lines[0] and "'2299'" in lines[0]


def box(x1, y1, x2, y2, label="dent"):
    return Box(x1=x1, y1=y1, x2=x2, y2=y2, label=label)


def evaluate(truth_per_image, predictions_per_image, labels=("dent", "scratch")):
    gt = coco_ground_truth([(f"{i}.jpg", 100, 100, t) for i, t in enumerate(truth_per_image)],
                           list(labels))
    dt = coco_detections([(i + 1, boxes, scores) for i, (boxes, scores) in
                          enumerate(predictions_per_image)], list(labels))
    return gt, dt, coco_evaluate(gt, dt)


def test_ground_truth_follows_coco_conventions():
    gt, _, _ = evaluate([[box(10, 20, 40, 60)], [box(0, 0, 5, 5, "scratch")]], [([], []), ([], [])])
    assert [a["id"] for a in gt["annotations"]] == [1, 2]
    assert [i["id"] for i in gt["images"]] == [1, 2]
    assert gt["annotations"][0]["bbox"] == [10, 20, 30, 40] and gt["annotations"][0]["area"] == 1200


def test_perfect_predictions_give_map_one():
    truth = [[box(10, 10, 50, 50), box(60, 60, 90, 95, "scratch")], [box(5, 5, 30, 30)]]
    _, _, result = evaluate(truth, [(t, [0.9] * len(t)) for t in truth])
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["per_class"]["scratch"]["ap"] == pytest.approx(1.0)


def test_a_box_shifted_below_iou_half_scores_zero_at_ap50():
    truth = [[box(10, 10, 50, 50)]]
    shifted = box(35, 10, 75, 50)  # IoU = 15*40 / (2*1600 - 600) = 0.23
    _, _, result = evaluate(truth, [([shifted], [0.99])])
    assert result["map50"] == 0.0 and result["map"] == 0.0


def test_a_confident_false_positive_lowers_ap_exactly_as_pycocotools_says():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = [[box(10, 10, 50, 50)], [box(20, 20, 60, 60)]]
    predictions = [([box(10, 10, 50, 50)], [0.6]), ([box(20, 20, 60, 60), box(70, 70, 90, 90)],
                                                   [0.5, 0.95])]
    gt, dt, ours = evaluate(truth, predictions)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        reference = COCOeval(coco_gt, coco_gt.loadRes(dt), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert ours["stats"] == pytest.approx(list(reference.stats), abs=1e-12)
    # The FP ranked first: precision 0, 1/2, 2/3 -> interpolated 2/3 up to recall 1.
    assert ours["map50"] == pytest.approx(2 / 3, abs=1e-2)
    _, _, without_fp = evaluate(truth, [predictions[0], ([box(20, 20, 60, 60)], [0.5])])
    assert without_fp["map50"] == pytest.approx(1.0)


def test_detection_confusion_counts_misses_and_hallucinations_in_background():
    truth = [box(10, 10, 50, 50, "dent"), box(60, 60, 90, 90, "scratch")]
    predicted = [box(11, 11, 50, 50, "scratch"),  # right place, wrong class
                 box(0, 70, 20, 95, "dent")]  # nothing there
    result = detection_confusion([(truth, predicted, [0.9, 0.8])], ["dent", "scratch"])
    names = result["labels"]
    cell = {(names[i], names[j]): v for i, row in enumerate(result["matrix"]) for j, v in enumerate(row)}
    assert names == ["dent", "scratch", "background"]
    assert cell[("dent", "scratch")] == 1
    assert cell[("scratch", "background")] == 1  # missed true box: background column
    assert cell[("background", "dent")] == 1  # hallucinated box: background row
    assert sum(map(sum, result["matrix"])) == 3
    low = detection_confusion([(truth, predicted, [0.05, 0.05])], ["dent", "scratch"],
                              confidence=0.1)
    assert low["matrix"][0][2] == 1 and low["matrix"][2][0] == 0  # below the confidence threshold


def test_by_default_every_box_the_model_wrote_enters_the_confusion_matrix():
    # A small model's well-placed box scores ~0.02 (1000 location bins share the probability):
    # a 0.1 threshold showed a 0.98 mAP50 detector as missing every defect.
    truth = [box(10, 10, 50, 50, "dent")]
    result = detection_confusion([(truth, [box(11, 11, 50, 50, "dent")], [0.02])], ["dent"])
    assert result["matrix"][0][0] == 1 and result["matrix"][0][1] == 0


def test_confidences_come_from_the_token_log_probabilities():
    tokens = ["<s>", "dent", "<loc_100>", "<loc_100>", "<loc_500>", "<loc_500>", "sc", "ratch",
              "<loc_1>", "<loc_2>", "<loc_3>", "<loc_4>", "<loc_5>", "<loc_6>", "<loc_7>", "<loc_8>",
              "</s>"]
    logprobs = [0.0, -0.1, -0.2, -0.2, -0.3, -0.3, -1.0, -1.0, -0.5, -0.5, -0.5, -0.5,
                -0.1, -0.1, -0.1, -0.1, 0.0]
    found, failures = boxes_from_tokens(tokens, logprobs, 200, 100)
    assert failures == 0
    assert [label for label, _, _ in found] == ["dent", "scratch", "scratch"]
    assert found[0][2] == pytest.approx(math.exp((-0.1 - 0.2 - 0.2 - 0.3 - 0.3) / 5))
    assert found[1][2] == pytest.approx(math.exp((-1.0 - 1.0 - 2.0) / 6))
    assert found[0][1].x1 == pytest.approx(20.1) and found[0][1].y2 == pytest.approx(50.05)
    # The second box of "scratch": the label's pieces again, with its own four loc tokens.
    assert found[2][2] == pytest.approx(math.exp((-1.0 - 1.0 - 0.1 * 4) / 6))


@pytest.mark.parametrize(("tokens", "failures"), [
    (["dent", "<loc_1>", "<loc_2>", "<loc_3>"], 1),  # three locs
    (["<loc_1>", "<loc_2>", "<loc_3>", "<loc_4>"], 1),  # no label
    (["dent", "<loc_1>", "<loc_2>", "<loc_3>", "<loc_4>", "spot"], 1),  # label, no box
    ([], 0),
])
def test_unparseable_outputs_are_counted(tokens, failures):
    assert boxes_from_tokens(tokens, [0.0] * len(tokens), 10, 10)[1] == failures


def test_bad_coco_inputs_are_refused_with_a_reason():
    gt = coco_ground_truth([("a.jpg", 10, 10, [box(1, 1, 5, 5)])], ["dent"])
    with pytest.raises(CocoInputError, match="not in the ground truth"):
        coco_evaluate(gt, [{"image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}])


def test_classification_metrics_on_a_known_input():
    from tasks.scoring.coco import classification_metrics

    truth = ["passed", "passed", "passed", "scratch", "scratch", "spot"]
    predicted = ["passed", "passed", "scratch", "scratch", "passed", "spot"]
    metrics = classification_metrics(truth, predicted, ["passed", "scratch", "spot", "unused"])
    assert metrics["accuracy"] == 4 / 6
    # F1: passed 2/3 (p 2/3, r 2/3), scratch 1/2 (p 1/2, r 1/2), spot 1; "unused" never occurs.
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert metrics["per_class"]["scratch"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                               "support": 2}


class ScriptedGenerator:
    """A model whose `generate` returns a given token sequence with given log-probabilities, so
    that `predict_batch` can be checked on exactly the output that breaks a parser."""

    def __init__(self, sequence: list[int], logprobs: list[float], vocab_size: int):
        import torch

        self.sequence, self.logprobs = torch.tensor([sequence]), torch.tensor([logprobs])
        self.scores = scripted_step_scores(self.sequence[:, -self.logprobs.shape[1]:], self.logprobs,
                                           vocab_size)
        self.weight = torch.zeros(1)

    def parameters(self):
        yield self.weight

    def generate(self, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(sequences=self.sequence, scores=self.scores)

    def compute_transition_scores(self, sequences, scores, beam_indices, normalize_logits):
        return self.logprobs


def test_each_box_keeps_its_own_label_through_prediction(tiny_florence):
    from PIL import Image
    from transformers import AutoProcessor

    from tasks.scoring.generation import predict_batch

    processor = AutoProcessor.from_pretrained(tiny_florence)
    text = "défaut<loc_100><loc_100><loc_500><loc_500>spot<loc_600><loc_600><loc_900><loc_900></s>"
    ids = [2] + processor.tokenizer(text, add_special_tokens=False).input_ids
    model = ScriptedGenerator(ids, [0.0] + [-0.1] * (len(ids) - 1), len(processor.tokenizer))
    [prediction] = predict_batch(model, processor, [Image.new("RGB", (100, 100))],
                                 {"défaut", "spot"})
    # The processor's own parser turns "défaut" into "dfaut"; pairing its labels with our boxes
    # by position gave the first box an unknown label. One parser keeps both boxes right.
    assert [box.label for box in prediction.boxes] == ["défaut", "spot"]
    assert prediction.boxes[0].x1 == pytest.approx(10.05) and prediction.boxes[1].x2 == \
        pytest.approx(90.05)
    assert prediction.unknown_labels == [] and prediction.parse_failures == 0
    assert prediction.scores == [pytest.approx(math.exp(-0.1))] * 2


def test_the_docs_state_the_confusion_threshold_the_code_uses():
    import re

    from tasks.scoring.coco import CONFUSION_CONFIDENCE
    from tests.support import REPO

    stated = re.findall(r"confidence >= ([0-9.]+)", (REPO / "docs" / "evaluation.md").read_text())
    assert stated and {float(value) for value in stated} == {CONFUSION_CONFIDENCE}
