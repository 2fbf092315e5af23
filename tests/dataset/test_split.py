import hashlib
from collections import Counter

from tasks.core.config import SplitConfig
from tasks.core.records import Box, Sample
from tasks.dataset.split import assign_splits, dedupe_by_content, split_of


def sample(n: int, label: str = "a") -> Sample:
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    return Sample(item=f"{n}.xml", image_path=f"/x/{n}.jpg", source="s", sha256=sha,
                  boxes=[Box(x1=0, y1=0, x2=1, y2=1, label=label)])


def test_split_is_a_pure_function_of_the_hash_and_never_moves_old_images():
    ratios = SplitConfig()
    old = assign_splits([sample(n) for n in range(500)], ratios)
    more = assign_splits([sample(n) for n in range(500, 600)] + [sample(n) for n in range(500)],
                         ratios)
    before = {s.item: s.split for s in old}
    after = {s.item: s.split for s in more}
    assert all(after[item] == split for item, split in before.items())


def test_split_follows_the_ratios_in_every_class():
    ratios = SplitConfig(train=0.6, validation=0.2, test=0.2)
    samples = [sample(n, label="ab"[n % 2]) for n in range(4000)]
    counts = Counter((s.boxes[0].label, s.split) for s in assign_splits(samples, ratios))
    for label in "ab":
        total = sum(v for (lab, _), v in counts.items() if lab == label)
        assert abs(counts[(label, "train")] / total - 0.6) < 0.04
        assert abs(counts[(label, "test")] / total - 0.2) < 0.04


def test_zero_ratio_splits_stay_empty():
    ratios = SplitConfig(train=0.5, validation=0.0, test=0.5)
    splits = {split_of(hashlib.sha256(str(n).encode()).hexdigest(), ratios) for n in range(300)}
    assert splits == {"train", "test"}


def test_same_pixels_twice_keeps_the_first_and_names_the_second():
    a, b = sample(1), sample(1).model_copy(update={"item": "0.xml"})
    kept, rejected, boxes = dedupe_by_content([a, b])
    assert [s.item for s in kept] == ["0.xml"]
    assert [(r.item, r.reason) for r in rejected] == [("1.xml", "duplicate_image")]
    assert len(boxes) == 1
