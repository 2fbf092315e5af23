"""What the dataset steps' memos and the target budget are keyed on: the code that makes them
(not the whole package), and for the budget, the tokenizer the targets are counted with."""

from pathlib import Path

import pytest

from tasks.core.config import AugmentConfig, TilingConfig
from tasks.core.records import Box, Sample, write_manifest
from tasks.dataset.augment import augment_memo
from tasks.dataset.budget import BYTE_BOUND, budget_step, budget_task, tokenizer_key
from tasks.dataset.loc_tokens import loc_targets_step
from tests.support import TasksCopy

ELSEWHERE = ("nightly/alerts.py", "training/detector.py", "ingest/voc.py", "core/config.py")


def memo_names(store: Path, step: str) -> set[str]:
    return {path.name for path in (store / "memos" / step).glob("*.tsv")}


def measured(tmp_path: Path, checkpoint: str = "tiny") -> set[str]:
    """The budget memo's file after measuring one sample (the memo is named by its key)."""
    sample = Sample(item="a.xml", image_path="a.jpg", source="a.xml", sha256="ab" * 32,
                    width=100, height=80, split="train",
                    boxes=[Box(x1=1, y1=2, x2=30, y2=40, label="scratch")])
    manifest = write_manifest([sample], tmp_path / "manifests", "split")
    budget_step(manifest, 1024, checkpoint, tmp_path / "manifests", None, tmp_path / "store")
    loc_targets_step(manifest, tmp_path / "manifests", tmp_path / "store")
    return memo_names(tmp_path / "store", "budget") | memo_names(tmp_path / "store", "loc-targets")


def augment_key(tmp_path: Path) -> str:
    return augment_memo(AugmentConfig(), 10**8, tmp_path / "store").path.name


@pytest.mark.parametrize("module", ["dataset/augment.py", "images/boxes.py", "images/store.py"])
def test_the_flips_memo_follows_the_code_that_flips(module, tmp_path, monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    before = augment_key(tmp_path)
    for elsewhere in ELSEWHERE:
        copy.append(elsewhere)
    assert augment_key(tmp_path) == before
    copy.append(module)
    assert augment_key(tmp_path) != before


def test_the_budget_and_targets_memos_follow_their_code(tmp_path, monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    first = measured(tmp_path)
    assert len(first) == 2
    for elsewhere in ELSEWHERE:
        copy.append(elsewhere)
    assert measured(tmp_path) == first  # the same memo files, nothing new
    copy.append("dataset/loc_tokens.py")  # both count and write targets with it
    second = measured(tmp_path)
    assert len(second) == 4 and first < second
    copy.append("dataset/budget.py")
    assert len(measured(tmp_path) - second) == 1


def write_tokenizer(folder: Path, vocabulary: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_text(vocabulary)
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "BartTokenizer"}')


def test_the_tokenizer_key_is_the_byte_bound_until_a_tokenizer_is_here_then_its_files(tmp_path):
    checkpoint = tmp_path / "Florence-2-local"
    checkpoint.mkdir()
    assert tokenizer_key(str(checkpoint)) == BYTE_BOUND == tokenizer_key("tiny")
    write_tokenizer(checkpoint, '{"model": {"vocab": {"a": 0}}}')
    exact = tokenizer_key(str(checkpoint))
    assert exact != BYTE_BOUND
    assert tokenizer_key(str(checkpoint)) == exact
    write_tokenizer(checkpoint, '{"model": {"vocab": {"b": 0}}}')  # same size, other tokens
    assert tokenizer_key(str(checkpoint)) not in (exact, BYTE_BOUND)


def test_a_budget_counted_by_the_byte_bound_is_not_reused_once_the_tokenizer_is_here(tmp_path):
    checkpoint = tmp_path / "Florence-2-local"
    checkpoint.mkdir()
    inputs = {"samples": write_manifest([], tmp_path / "m", "split"), "budget": 1024,
              "checkpoint": str(checkpoint), "manifests_dir": str(tmp_path / "m"),
              "tiling": TilingConfig(size=512), "store_root": str(tmp_path / "store"),
              "max_pixels": 10**8, "min_box_size": 1.0}

    def key() -> str:
        return budget_task.cache_policy.compute_key(None, inputs, {})

    before = key()
    assert key() == before
    write_tokenizer(checkpoint, '{"model": {"vocab": {"a": 0}}}')  # e.g. downloaded by training
    assert key() != before


def test_the_targets_and_flips_of_unchanged_chunks_take_no_look_up_per_record(tmp_path, monkeypatch):
    from tasks.core.memo import LineMemo
    from tasks.core.records import read_lines
    from tasks.dataset.augment import augment_step
    from tests.dataset.test_augment import samples

    originals = samples(tmp_path / "images", 150)
    manifest = write_manifest(originals, tmp_path / "manifests", "split")
    store, out = str(tmp_path / "store"), tmp_path / "manifests"
    config = AugmentConfig(hflip=True)

    def both():
        flipped, counters = augment_step(manifest, config, 10**8, store, out)
        return flipped, counters, loc_targets_step(flipped, out, store)

    first = both()
    look_ups = []
    real_get = LineMemo.get
    monkeypatch.setattr(LineMemo, "get", lambda memo, line: look_ups.append(line) or real_get(memo, line))
    again = both()
    assert again[0] == first[0] and again[2] == first[2]  # the same manifests
    train = sum(sample.split == "train" for sample in originals)
    assert first[1] == {"hflip": train, "images_encoded": train}
    assert again[1] == {"hflip": train, "encodes_reused": train}  # the same flips, reused
    assert look_ups == []  # before chunk memos: a look-up per record, in each step

    grown = write_manifest([*originals, *samples(tmp_path / "more", 1)], out, "split")
    flipped, _ = augment_step(grown, config, 10**8, store, out)
    assert len(look_ups) < 4 * 64  # the chunk the new record falls into, not every record
    assert sum(1 for _ in read_lines(flipped)) == sum(1 for _ in read_lines(first[0])) + 1
