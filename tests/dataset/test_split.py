"""The split step as production runs it: from shard manifests, streaming, frozen across nights."""

import hashlib
from collections import Counter

from tasks.core.config import SplitConfig
from tasks.core.records import Box, Sample, read_records, read_rejections, write_manifest
from tasks.dataset.split import split_of, split_step


def sample(n: int, label: str = "a", item: str | None = None) -> Sample:
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    return Sample(item=item or f"{n:05d}.xml", image_path=f"/x/{n}.jpg", source="s", sha256=sha,
                  boxes=[Box(x1=0, y1=0, x2=1, y2=1, label=label)])


def run_split(shards: list[list[Sample]], ratios: SplitConfig, folder) -> tuple[dict, list, list]:
    """split_step on shard manifests (each in item order, as the image step writes them)."""
    manifests = [write_manifest(sorted(shard, key=lambda s: s.item), folder, "kept")
                 for shard in shards]
    out = split_step(manifests, ratios, folder)
    splits = {s.item: s for s in read_records(out.samples, Sample)}
    return splits, read_rejections(out.rejected), read_rejections(out.rejected_boxes)


def test_split_is_a_pure_function_of_the_hash_and_never_moves_old_images(tmp_path):
    ratios = SplitConfig()
    old, _, _ = run_split([[sample(n) for n in range(0, 500, 2)], [sample(n) for n in range(1, 500, 2)]],
                          ratios, tmp_path)
    more, _, _ = run_split([[sample(n) for n in range(600)]], ratios, tmp_path)
    assert len(old) == 500 and len(more) == 600
    assert all(more[item].split == s.split for item, s in old.items())
    assert all(s.split == split_of(s.sha256, ratios) for s in more.values())


def test_split_follows_the_ratios_in_every_class(tmp_path):
    ratios = SplitConfig(train=0.6, validation=0.2, test=0.2)
    samples = [sample(n, label="ab"[n % 2]) for n in range(4000)]
    splits, _, _ = run_split([samples[:2000], samples[2000:]], ratios, tmp_path)
    counts = Counter((s.boxes[0].label, s.split) for s in splits.values())
    for label in "ab":
        total = sum(v for (lab, _), v in counts.items() if lab == label)
        assert abs(counts[(label, "train")] / total - 0.6) < 0.04
        assert abs(counts[(label, "test")] / total - 0.2) < 0.04


def test_zero_ratio_splits_stay_empty():
    ratios = SplitConfig(train=0.5, validation=0.0, test=0.5)
    splits = {split_of(hashlib.sha256(str(n).encode()).hexdigest(), ratios) for n in range(300)}
    assert splits == {"train", "test"}


def test_same_pixels_twice_keeps_the_first_and_names_the_second(tmp_path):
    # Two annotations of the same pixels, in different shards: kept once, whatever the shard.
    first, second = sample(1, item="0.xml"), sample(1, item="1.xml")
    splits, rejected, boxes = run_split([[second, sample(2)], [first]], SplitConfig(), tmp_path)
    assert set(splits) == {"0.xml", "00002.xml"}
    assert [(r.item, r.reason) for r in rejected] == [("1.xml", "duplicate_image")]
    assert [(r.item, r.reason) for r in boxes] == [("1.xml#0", "image_rejected")]


def test_a_split_line_is_the_record_pydantic_would_write(tmp_path):
    # The split is set in the record's line as text: byte for byte what a parse, a copy and a
    # dump give, however odd the strings (a quote, a backslash, the very field as a name).
    from tasks.dataset.split import with_split

    odd = [sample(1, item='say "split":null.xml'), sample(2, item="back\\slash\u00e9.xml"),
           sample(3, label='"split":null')]
    for record in odd:
        line = record.model_dump_json()
        assert with_split(line, "test") == record.model_copy(update={"split": "test"}).model_dump_json()
    splits, _, _ = run_split([odd], SplitConfig(train=0, validation=0, test=1), tmp_path)
    assert {item: s.split for item, s in splits.items()} == {s.item: "test" for s in odd}
