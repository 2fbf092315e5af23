"""The review set: the images with the most missed or spurious boxes, as LabelImg files, an
overlay and a gallery, worst first."""

import json

from PIL import Image

from tasks.core.records import Box
from tasks.evaluation.review import REVIEW_GALLERY, worst_images, write_review
from tasks.ingest.voc import parse_voc
from tasks.scoring.threshold import missed_and_spurious


def box(x: float, label: str = "scratch") -> Box:
    return Box(x1=x, y1=10, x2=x + 20, y2=30, label=label)


def test_a_box_of_the_wrong_class_is_one_miss_and_one_spurious_box():
    truth = [box(0), box(50, "spot")]
    assert missed_and_spurious(truth, [box(1), box(50)], [0.9, 0.9], 0.25) == (1, 1)
    assert missed_and_spurious(truth, [box(1), box(51, "spot")], [0.9, 0.9], 0.25) == (0, 0)
    # Below the threshold a prediction is not an answer: the true box counts as missed.
    assert missed_and_spurious(truth, [box(1), box(51, "spot")], [0.9, 0.1], 0.25) == (1, 0)
    # Two predictions of one true box: the second is spurious.
    assert missed_and_spurious([box(0)], [box(0), box(2)], [0.9, 0.8], 0.25) == (0, 1)


def test_the_worst_images_come_first_and_perfect_ones_never():
    truths = [[box(0)], [box(0), box(50)], [box(0)], []]
    predictions = [([box(0)], [0.9]), ([], []), ([box(90)], [0.9]), ([box(5)], [0.5])]
    assert worst_images(truths, predictions) == [(1, 2, 0), (2, 1, 1), (3, 0, 1)]
    assert worst_images(truths, predictions, count=1) == [(1, 2, 0)]


def test_the_review_folder_holds_labelimg_files_overlays_and_a_gallery(tmp_path):
    rows = [{"image": Image.new("RGB", (100, 40), (80, 80, 80)), "image_id": f"line/{n}.jpg"}
            for n in range(3)]
    truths = [[box(0)], [box(0), box(50, "spot")], [box(10)]]
    predictions = [([box(0)], [0.9]), ([box(60)], [0.7]), ([box(10)], [0.95])]
    listed = write_review(tmp_path, rows, truths, predictions, ["scratch", "spot"])
    assert [(item["image_id"], item["missed"], item["spurious"]) for item in listed] == [
        ("line/1.jpg", 2, 1)]
    review = tmp_path / "review"
    files = listed[0]["files"]
    truth_xml = parse_voc((review / files["ground_truth"]).read_bytes())
    assert [o.name for o in truth_xml.objects] == ["scratch", "spot"]
    assert truth_xml.filename == "01-1.jpg" and (review / files["image"]).is_file()
    assert [o.bndbox["xmin"] for o in parse_voc((review / files["predictions"]).read_bytes()).objects] \
        == ["61"]
    with Image.open(review / files["overlay"]) as overlay:
        assert overlay.size == (100, 40)
    assert (tmp_path / REVIEW_GALLERY).is_file()
    assert json.loads((review / "review.json").read_text())["images"][0]["rank"] == 1
    # A perfect evaluation afterwards leaves no stale review behind.
    assert write_review(tmp_path, rows, truths, [([b for b in t], [0.9] * len(t)) for t in truths],
                        ["scratch", "spot"]) == []
    assert not (tmp_path / REVIEW_GALLERY).exists() and not review.exists()
