"""Florence-2 location codec and `<OD>` targets."""

import re

from hypothesis import given
from hypothesis import strategies as st

from tasks.core.records import Box
from tasks.dataset.loc_tokens import (
    decode_box,
    decode_coord,
    encode_box,
    encode_coord,
    od_target,
)
from tasks.scoring.generation import boxes_from_tokens


def test_encode_is_floor_of_bins_and_clamped():
    assert encode_coord(0, 200) == 0
    assert encode_coord(0.19, 200) == 0
    assert encode_coord(0.2, 200) == 1
    assert encode_coord(199.9, 200) == 999
    assert encode_coord(200, 200) == 999  # the exclusive right edge still fits in 0..999
    assert encode_coord(-3, 200) == 0
    assert decode_coord(0, 200) == 0.1  # bin centre


@st.composite
def sized_box(draw):
    width = draw(st.integers(1, 20000))
    height = draw(st.integers(1, 20000))
    x1 = draw(st.floats(0, width))
    y1 = draw(st.floats(0, height))
    x2 = draw(st.floats(x1, width))
    y2 = draw(st.floats(y1, height))
    return Box(x1=x1, y1=y1, x2=x2, y2=y2, label="d"), width, height


@given(sized_box())
def test_decode_of_encode_is_within_one_bin(case):
    box, width, height = case
    q = encode_box(box, width, height)
    assert all(0 <= v <= 999 for v in q)
    back = decode_box(q, width, height)
    for original, decoded, size in ((box.x1, back.x1, width), (box.y1, back.y1, height),
                                    (box.x2, back.x2, width), (box.y2, back.y2, height)):
        assert abs(original - decoded) <= size / 1000 + 1e-9


def test_target_is_label_then_four_locs_per_box_in_reading_order():
    boxes = [Box(x1=100, y1=100, x2=150, y2=150, label="spot"),
             Box(x1=0, y1=0, x2=20, y2=40, label="scratch"),
             Box(x1=50, y1=0, x2=60, y2=10, label="patch")]
    target = od_target(boxes, 200, 200)
    assert target == ("scratch<loc_0><loc_0><loc_100><loc_200>"
                      "patch<loc_250><loc_0><loc_300><loc_50>"
                      "spot<loc_500><loc_500><loc_750><loc_750>")
    assert od_target([], 200, 200) == ""


def pieces(text: str) -> list[str]:
    """A target split the way a tokenizer splits it: loc tokens, and the text between them."""
    return re.findall(r"<loc_\d+>|</?s>|[^<]+", text)


def test_the_prediction_parser_round_trips_targets_and_counts_failures():
    boxes = [Box(x1=0, y1=0, x2=20, y2=40, label="scratch"), Box(x1=100, y1=100, x2=150, y2=150,
                                                                label="pitted surface")]
    tokens = pieces("</s><s>" + od_target(boxes, 200, 200) + "</s>")
    found, failures = boxes_from_tokens(tokens, [0.0] * len(tokens), 200, 200)
    assert failures == 0
    assert [label for label, _, _ in found] == ["scratch", "pitted surface"]
    assert abs(found[0][1].x2 - 20) <= 0.2
    tokens = pieces("spot<loc_1><loc_2><loc_3><loc_4><loc_5>dent<loc_1><loc_2><loc_3><loc_1200>")
    assert boxes_from_tokens(tokens, [0.0] * len(tokens), 100, 100)[1] == 2


def test_targets_of_known_records_come_from_the_memo_and_equal_made_ones(tmp_path, monkeypatch):
    import tasks.dataset.loc_tokens as loc_module
    from tasks.core.records import Box, Sample, read_lines, write_manifest
    from tasks.dataset.loc_tokens import loc_targets_step

    def sample(n: int) -> Sample:
        return Sample(item=f"{n}.xml", image_path=f"/x/{n}.jpg", source="s", width=100, height=80,
                      boxes=[Box(x1=n, y1=2, x2=n + 20, y2=30, label="dent")])

    store = tmp_path / "store"
    loc_targets_step(write_manifest(map(sample, range(5)), tmp_path / "m", "in"), tmp_path / "m", store)
    made = []
    real = loc_module.with_target
    monkeypatch.setattr(loc_module, "with_target", lambda s: made.append(s.item) or real(s))
    both = write_manifest(map(sample, range(7)), tmp_path / "m", "in")
    remembered = loc_targets_step(both, tmp_path / "m", store)
    assert made == ["5.xml", "6.xml"]
    assert list(read_lines(remembered)) == list(read_lines(loc_targets_step(both, tmp_path / "m2")))
