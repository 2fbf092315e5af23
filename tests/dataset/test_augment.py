"""Flipped copies: made on several threads, handed on in the order of the input, exactly mirrored."""

import hashlib
from collections import Counter

from PIL import Image, ImageOps

from tasks.core.config import AugmentConfig
from tasks.core.records import Box, Sample
from tasks.dataset.augment import augment


def samples(folder, count: int) -> list[Sample]:
    folder.mkdir()
    out = []
    for n in range(count):
        path = folder / f"img_{n:03d}.png"
        image = Image.new("RGB", (40, 30), (n, 2 * n, 3 * n))
        image.paste((255, 255, 255), (n % 30, 5, n % 30 + 8, 12))  # off-centre: a flip shows
        image.save(path)
        out.append(Sample(item=path.name, image_path=str(path), source=path.name,
                          sha256=hashlib.sha256(path.read_bytes()).hexdigest(), width=40,
                          height=30, image_format="PNG", split="train" if n % 3 else "test",
                          boxes=[Box(x1=n % 30, y1=5, x2=n % 30 + 8, y2=12, label="patch")]))
    return out


def test_flips_made_on_threads_come_out_in_input_order_and_mirror_their_originals(tmp_path):
    originals = samples(tmp_path / "images", 150)  # more than one chunk
    config = AugmentConfig(hflip=True, vflip=True)
    counters: Counter = Counter()
    threaded = list(augment(originals, config, str(tmp_path / "store"), 10**8, counters, workers=4))
    one_thread = list(augment(originals, config, str(tmp_path / "store-1"), 10**8, workers=1))

    expected = []
    for sample in originals:
        expected.append((sample.item, "none"))
        if sample.split == "train":
            expected += [(sample.item, "hflip"), (sample.item, "vflip")]
    assert [(s.item, s.augmentation) for s in threaded] == expected
    assert [(s.item, s.augmentation, s.boxes) for s in one_thread] == \
        [(s.item, s.augmentation, s.boxes) for s in threaded]
    train = sum(s.split == "train" for s in originals)
    assert counters == Counter(hflip=train, vflip=train, images_encoded=2 * train)

    by_key = {(s.item, s.augmentation): s for s in threaded}
    for sample in originals[1:10]:
        if sample.split != "train":
            continue
        source = Image.open(sample.image_path)
        mirrored = Image.open(by_key[(sample.item, "hflip")].processed_path)
        assert mirrored.tobytes() == ImageOps.mirror(source).tobytes()
        assert by_key[(sample.item, "hflip")].boxes[0].x1 == 40 - sample.boxes[0].x2


def test_a_first_run_decodes_each_image_once_and_encodes_each_flip_once_reusing_nothing(tmp_path):
    from tasks.core.config import DatasetConfig
    from tasks.dataset.local_run import prepare_steps
    from tasks.demo.sample_data import generate

    source = tmp_path / "source"
    generate(source, count=24, size=48, seed=3, troubles=False)
    config = DatasetConfig.model_validate({
        "name": "work", "grayscale": "convert", "shard_size": 8, "augment": {"hflip": True},
        "source": {"format": "voc", "images": source / "images", "annotations": source / "annotations"}})
    seconds: dict[str, float] = {}
    published, work = prepare_steps(config, tmp_path / "dataset", tmp_path / "home", seconds=seconds)
    flips = sum(published.rows.values()) - 24
    # Each step's time, in pipeline order, for the benchmark's table of where the time goes.
    assert list(seconds) == ["ingest", "shard", "images", "split", "budget", "flips", "targets", "publish"]
    assert all(value > 0 for value in seconds.values())
    assert flips > 0
    # The flips are rendered by the image step and found made by the augment step: still one
    # encode each in this run's work, and no reuse (a first run has nothing to reuse).
    assert work["images_decoded"] == 24
    assert work["images_encoded"] >= flips
    assert "encodes_reused" not in work and "images_reused" not in work


def test_a_second_run_takes_known_samples_from_the_memo_and_makes_only_the_new_ones(tmp_path, monkeypatch):
    import tasks.dataset.augment as augment_module
    from tasks.core.records import read_lines, write_manifest
    from tasks.dataset.augment import augment_step

    everything = samples(tmp_path / "images", 90)
    old, new = everything[:80], everything[80:]
    config, store = AugmentConfig(hflip=True), str(tmp_path / "store")
    first, _ = augment_step(write_manifest(old, tmp_path / "m", "in"), config, 10**8, store, tmp_path / "m")

    calls = Counter()
    real = augment_module.derived_image
    monkeypatch.setattr(augment_module, "derived_image",
                        lambda source, *a, **k: calls.update([source]) or real(source, *a, **k))
    both = write_manifest(everything, tmp_path / "m", "in")
    second, counters = augment_step(both, config, 10**8, store, tmp_path / "m")
    assert set(calls) == {s.image_path for s in new if s.split == "train"}  # the old ones: remembered
    old_train = sum(s.split == "train" for s in old)
    new_train = sum(s.split == "train" for s in new)
    assert counters == Counter(hflip=old_train + new_train, encodes_reused=old_train,
                               images_encoded=new_train)

    # The remembered lines are the lines a store without a memo makes, in the same order.
    monkeypatch.setattr(augment_module, "derived_image", real)
    fresh, _ = augment_step(both, config, 10**8, str(tmp_path / "fresh-store"), tmp_path / "m-fresh")
    assert [line.replace("fresh-store", "store") for line in read_lines(fresh)] == list(read_lines(second))
    assert list(read_lines(first)) == list(read_lines(second))[:len(list(read_lines(first)))]


def test_a_remembered_flip_whose_file_is_gone_is_made_again(tmp_path):
    from pathlib import Path

    from tasks.core.records import read_records, write_manifest
    from tasks.dataset.augment import augment_step

    manifest = write_manifest(samples(tmp_path / "images", 6), tmp_path / "m", "in")
    config, store = AugmentConfig(hflip=True), str(tmp_path / "store")
    out, _ = augment_step(manifest, config, 10**8, store, tmp_path / "m")
    flips = [s for s in read_records(out) if s.augmentation == "hflip"]
    Path(flips[0].processed_path).unlink()  # a store cleaned by hand
    again, counters = augment_step(manifest, config, 10**8, store, tmp_path / "m")
    assert Path(flips[0].processed_path).is_file()
    assert counters["images_encoded"] == 1 and counters["encodes_reused"] == len(flips) - 1
    assert list(read_records(again)) == list(read_records(out))
