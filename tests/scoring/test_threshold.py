"""The confidence threshold a model's own validation images choose (best F1), and predict
using it by default: a small model whose well-placed boxes score 0.03 still gets its boxes."""

import json

import pytest

from tasks.core.records import Box
from tasks.predict.folder import settings_for
from tasks.scoring.generation import DEFAULT_THRESHOLD
from tasks.scoring.threshold import best_f1_threshold, matched


def box(x: float, label: str = "dent") -> Box:
    return Box(x1=x, y1=0, x2=x + 10, y2=10, label=label)


def test_matching_is_greedy_by_confidence_within_a_class():
    truth = [box(0), box(50)]
    assert matched(truth, [box(1), box(2), box(51, "spot")], [0.5, 0.9, 0.7]) == [
        (0.9, True), (0.7, False), (0.5, False)]


def test_the_threshold_with_the_best_f1_on_a_small_models_scale():
    truths = [[box(0)], [box(0)], [box(0)], [box(0)]]
    # Right boxes at 0.03-0.04, wrong ones at 0.02 and 0.01: 0.03 keeps every right box only.
    predictions = [([box(0), box(60)], [0.04, 0.02]), ([box(1)], [0.03]), ([box(0)], [0.035]),
                   ([box(2), box(70)], [0.031, 0.01])]
    best = best_f1_threshold(truths, predictions)
    assert best["threshold"] == 0.03 and best["f1"] == 1.0
    assert (best["precision"], best["recall"]) == (1.0, 1.0)
    assert best_f1_threshold([[]], [([], [])]) is None


def test_a_tie_in_scores_is_kept_or_dropped_as_one():
    best = best_f1_threshold([[box(0)]], [([box(0), box(40)], [0.5, 0.5])])
    assert best["threshold"] == 0.5 and best["precision"] == 0.5


@pytest.mark.parametrize(("facts", "given", "expected"), [
    ({"threshold": {"threshold": 0.031, "f1": 0.98}}, None, 0.031),
    ({"threshold": {"threshold": 0.031, "f1": 0.98}}, 0.5, 0.5),
    ({}, None, DEFAULT_THRESHOLD),
])
def test_predict_takes_the_models_threshold_unless_told(tmp_path, facts, given, expected):
    (tmp_path / "defectflow.json").write_text(json.dumps(facts))
    assert settings_for(tmp_path, given).threshold == expected


def test_each_class_with_enough_boxes_gets_the_threshold_its_own_boxes_choose():
    from tasks.scoring.threshold import at_or_above, best_f1_thresholds_per_class

    # The model is sure of dents (right at 0.9, wrong at 0.5) and unsure of spots (right at
    # 0.2, wrong at 0.1): one threshold for both loses either the spots or precision on dents.
    truths = [[box(0), box(100, "spot")] for _ in range(6)] + [[box(0)]]
    predictions = [([box(0), box(40), box(100, "spot"), box(140, "spot")], [0.9, 0.5, 0.2, 0.1])
                   for _ in range(6)] + [([box(0)], [0.9])]
    per_class = best_f1_thresholds_per_class(truths, predictions)
    assert {label: chosen["threshold"] for label, chosen in per_class.items()} == {
        "dent": 0.9, "spot": 0.2}
    assert per_class["dent"]["f1"] == per_class["spot"]["f1"] == 1.0
    overall = best_f1_threshold(truths, predictions)["threshold"]
    assert overall == 0.2  # the spots' recall wins it: the wrong dents at 0.5 come along
    assert box(40) in at_or_above(*predictions[0], overall)[0]
    kept, _ = at_or_above(*predictions[0], overall, {"dent": 0.9, "spot": 0.2})
    assert kept == [box(0), box(100, "spot")]
    # A class with fewer than MIN_CLASS_BOXES boxes keeps the global threshold.
    assert best_f1_thresholds_per_class(truths[:4], predictions[:4]) == {}


def test_predict_takes_the_class_thresholds_too_and_a_given_threshold_replaces_them(tmp_path):
    from tasks.predict.folder import kept_boxes
    from tasks.scoring.generation import Prediction

    (tmp_path / "defectflow.json").write_text(json.dumps({"threshold": {
        "threshold": 0.5, "f1": 0.9, "per_class": {"spot": 0.2}}}))
    found = Prediction(boxes=[box(0), box(100, "spot"), box(200, "spot")], scores=[0.6, 0.3, 0.1])
    chosen = settings_for(tmp_path)
    assert chosen.class_thresholds == {"spot": 0.2}
    assert kept_boxes(found, chosen)[0] == [box(0), box(100, "spot")]
    told = settings_for(tmp_path, 0.25)
    assert told.class_thresholds == {} and kept_boxes(found, told)[0] == [box(0), box(100, "spot")]
    assert kept_boxes(found, settings_for(tmp_path, 0.05))[0] == found.boxes


def test_no_threshold_comes_from_a_class_the_model_never_gets_right():
    from tasks.scoring.threshold import best_f1_thresholds_per_class, selection_thresholds

    # Dents right at 0.9; every scratch box lands where no scratch is (0.6 down to 0.01): with
    # F1 0 at every threshold, a tie to the lower one would set 0.01 and keep every scratch box.
    truths = [[box(0), box(200, "scratch")] for _ in range(6)]
    predictions = [([box(0), box(100, "scratch"), box(150, "scratch")], [0.9, 0.6, 0.01])
                   for _ in range(6)]
    assert set(best_f1_thresholds_per_class(truths, predictions)) == {"dent"}
    chosen = selection_thresholds(truths, predictions, DEFAULT_THRESHOLD)
    assert chosen["per_class"] == {"dent": 0.9} and chosen["fell_back"] == ["scratch"]
    assert chosen["source"] == "best_f1" and chosen["threshold"] == 0.9

    # Nothing ever right: no global threshold either; the documented default, said so.
    wrong = [([box(100), box(150)], [0.6, 0.01]) for _ in range(6)]
    assert best_f1_threshold([[box(0)]] * 6, wrong) is None
    fallback = selection_thresholds([[box(0)]] * 6, wrong, DEFAULT_THRESHOLD)
    assert (fallback["threshold"], fallback["source"]) == (DEFAULT_THRESHOLD, "default")
    assert fallback["per_class"] == {} and fallback["fell_back"] == ["dent"]
