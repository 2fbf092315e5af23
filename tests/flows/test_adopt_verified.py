"""`prelabel: {adopt: verified}` over nights: of the inbox's pre-labels, those a person corrected
and marked verified in LabelImg are in the next dataset; the others are not, and do not count
as new."""

import json

import pytest

from flows.retrain import retrain
from tasks.core.labels import ANY_LABEL
from tasks.demo.sample_data import generate
from tasks.ingest.labelimg_writer import labelimg_xml
from tasks.ingest.voc import object_to_box, parse_voc
from tasks.nightly.changes import dataset_index
from tests.flows.test_retrain import nightly_config

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


def verify_in_labelimg(xml_path, truth_xml) -> None:
    """A person fixes the pre-label's boxes, presses "Verify Image" and saves: LabelImg writes
    the whole file again, in place, with verified="yes" on the root."""
    truth = parse_voc(truth_xml.read_bytes())
    boxes = [object_to_box(obj, ANY_LABEL) for obj in truth.objects]
    image = xml_path.with_name(truth.filename)
    xml_path.write_bytes(labelimg_xml(image, truth.width, truth.height, 3, boxes, verified=True))


def test_the_verified_prelabels_are_in_the_next_dataset_and_the_others_are_not(tmp_path):
    source, inbox = tmp_path / "source", tmp_path / "inbox"
    generate(source, count=24, size=64, seed=9)
    generate(inbox, count=4, size=64, seed=10, troubles=False)
    truths = sorted((inbox / "annotations").glob("*.xml"))
    for xml in truths:  # kept aside: what a person would draw
        xml.rename(tmp_path / xml.name)
    config = tmp_path / "line.yaml"
    config.write_text(nightly_config(source)
                      + f"prelabel: {{inbox: {inbox}/images, threshold: 0, adopt: verified}}\n")
    home, work = tmp_path / "home", tmp_path / "work"

    # Night 1: the champion pre-labels the 4 inbox images; none is a label yet.
    first = retrain(str(config), str(work), str(home), return_state=True)
    assert first.is_completed(), first.message
    summary = first.result()
    assert summary["prelabels"]["written"] == 4
    assert summary["report"]["annotations"]["inbox_read"] == 0
    prelabels = sorted((inbox / "images").glob("*.xml"))
    assert all('<annotation verified="no">' in p.read_text() for p in prelabels)

    # Night 2, nobody has touched them: the pre-labels are not new data.
    second = retrain(str(config), str(work), str(home), return_state=True)
    assert second.is_completed() and "no new images" in second.message

    # A person corrects and verifies two of them; the other two stay model guesses.
    verified = prelabels[:2]
    for xml in verified:
        verify_in_labelimg(xml, tmp_path / xml.name)
    third = retrain(str(config), str(work), str(home), return_state=True)
    assert third.is_completed(), third.message
    result = third.result()
    assert result["changes"]["images_added"] == 2
    annotations = result["report"]["annotations"]
    assert (annotations["inbox_read"], annotations["inbox_waiting_verification"]) == (2, 2)
    items = set(dataset_index(result["report"]["dataset"]["folder"]))
    assert {f"inbox/{xml.name}" for xml in verified} <= items
    assert not {f"inbox/{xml.name}" for xml in prelabels[2:]} & items
    assert len(items) == len(json.loads((work / "dataset_index.json").read_text()))
    # Nothing in the inbox moved; what the person wrote is as they saved it.
    assert sorted((inbox / "images").glob("*.xml")) == prelabels
    assert all('verified="yes"' in xml.read_text() for xml in verified)
