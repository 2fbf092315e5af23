"""The image step remembers each shard it processed: a night in which a shard did not change
opens none of its images, with or without Prefect's cache; a shard whose image changed is
processed again."""

import os

import pytest

import tasks.images.sample as sample_module
from tasks.core.config import ImageLimits, load_config
from tasks.core.records import read_samples
from tasks.demo.sample_data import generate
from tasks.images.shard import ImageStepConfig, process_images_step
from tasks.ingest.ingest import ingest_step, shard_step
from tests.support import demo_config


@pytest.fixture
def shard_of_ten(tmp_path):
    source = tmp_path / "source"
    generate(source, count=10, size=32, seed=2, troubles=False)
    config_path = tmp_path / "c.yaml"
    config_path.write_text(demo_config(source))
    config = load_config(config_path)
    ingested = ingest_step(config.source, config.label_rules, tmp_path / "manifests")
    [shard] = shard_step(ingested.candidates, 1000, tmp_path / "manifests")
    return source, shard, tmp_path


def test_a_shard_seen_before_is_answered_without_opening_an_image(shard_of_ten, monkeypatch):
    _, shard, tmp_path = shard_of_ten
    config = ImageStepConfig(grayscale="convert", images=ImageLimits())
    first = process_images_step(shard, config, tmp_path / "store", tmp_path / "manifests")
    assert first.counters["images_decoded"] == 10

    def no_image_may_be_opened(*args, **kwargs):
        raise AssertionError("an image was opened for a shard seen before")

    monkeypatch.setattr(sample_module, "inspect_and_decode", no_image_may_be_opened)
    monkeypatch.setattr(sample_module, "derived_image", no_image_may_be_opened)
    again = process_images_step(shard, config, tmp_path / "store", tmp_path / "manifests")
    assert again.kept == first.kept and again.rejected == first.rejected
    assert "images_decoded" not in again.counters and again.counters["images_reused"] == 10
    assert again.counters.get("images_encoded", 0) == 0
    assert again.counters.get("encodes_reused", 0) == \
        first.counters.get("images_encoded", 0) + first.counters.get("encodes_reused", 0)
    # The facts about the data are the same, whoever computed them.
    assert again.counters.get("grayscale_detected") == first.counters.get("grayscale_detected")


def test_an_image_changed_on_disk_makes_its_shard_processed_again(shard_of_ten):
    source, shard, tmp_path = shard_of_ten
    config = ImageStepConfig(grayscale="convert", images=ImageLimits())
    process_images_step(shard, config, tmp_path / "store", tmp_path / "manifests")
    samples = read_samples(shard)
    touched = samples[3]
    stat = os.stat(touched.image_path)
    os.utime(touched.image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    config_file = load_config(tmp_path / "c.yaml")
    ingested = ingest_step(config_file.source, config_file.label_rules, tmp_path / "manifests")
    [new_shard] = shard_step(ingested.candidates, 1000, tmp_path / "manifests")
    assert new_shard.digest != shard.digest
    again = process_images_step(new_shard, config, tmp_path / "store", tmp_path / "manifests")
    # Processed again (each image's bytes are still known to the content store).
    assert again.counters["images_reused"] == 10 and again.kept.count == 10


def test_a_changed_shard_opens_only_its_new_and_changed_images(shard_of_ten, monkeypatch):
    source, shard, tmp_path = shard_of_ten
    config = ImageStepConfig(grayscale="convert", images=ImageLimits())
    first = process_images_step(shard, config, tmp_path / "store", tmp_path / "manifests")
    touched = read_samples(shard)[3]
    stat = os.stat(touched.image_path)
    os.utime(touched.image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    config_file = load_config(tmp_path / "c.yaml")
    ingested = ingest_step(config_file.source, config_file.label_rules, tmp_path / "manifests")
    [new_shard] = shard_step(ingested.candidates, 1000, tmp_path / "manifests")

    opened = []
    real = sample_module.inspect_and_decode
    monkeypatch.setattr(sample_module, "inspect_and_decode",
                        lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    again = process_images_step(new_shard, config, tmp_path / "store", tmp_path / "manifests")
    assert opened == [touched.image_path]  # the other nine: remembered per image
    assert again.counters["images_reused"] == 10 and again.kept.count == first.kept.count
    times = {"file_mtime_ns": 0, "file_ctime_ns": 0}  # the touch moved them, and only them
    assert [s.model_copy(update=times) for s in read_samples(again.kept)] == \
        [s.model_copy(update=times) for s in read_samples(first.kept)]


def test_a_different_config_is_a_different_memo(shard_of_ten):
    _, shard, tmp_path = shard_of_ten
    convert = ImageStepConfig(grayscale="convert", images=ImageLimits())
    drop = ImageStepConfig(grayscale="drop", images=ImageLimits())
    converted = process_images_step(shard, convert, tmp_path / "store", tmp_path / "manifests")
    dropped = process_images_step(shard, drop, tmp_path / "store", tmp_path / "manifests")
    gray = converted.counters.get("grayscale_detected", 0)
    assert gray > 0 and dropped.kept.count == 10 - gray and dropped.dropped_grayscale.count == gray


def test_each_source_image_is_decoded_once_its_flips_made_while_its_pixels_are_at_hand(
        shard_of_ten, monkeypatch):
    import tasks.images.store as store_module
    from tasks.core.config import AugmentConfig, SplitConfig
    from tasks.core.records import read_records
    from tasks.dataset.augment import augment
    from tasks.dataset.split import split_step

    _, shard, tmp_path = shard_of_ten
    decodes = []
    real_open_image = store_module.open_image
    monkeypatch.setattr(store_module, "open_image",
                        lambda data, max_pixels: decodes.append(1) or real_open_image(data, max_pixels))

    def dataset(store: str, image_step: ImageStepConfig) -> list:
        output = process_images_step(shard, image_step, tmp_path / store, tmp_path / store / "m")
        split = split_step([output.kept], SplitConfig(), tmp_path / store / "m")
        return list(augment(read_records(split.samples), AugmentConfig(hflip=True),
                            str(tmp_path / store), 10**8))

    flips_at_hand = ImageStepConfig(grayscale="convert", images=ImageLimits(), flips=("hflip",))
    records = dataset("store", flips_at_hand)
    flips = [r for r in records if r.augmentation == "hflip"]
    assert flips and len(decodes) == 10  # ten source images, each decoded once

    decodes.clear()  # the way before: the augment step decodes each training image again
    before = dataset("store-before", ImageStepConfig(grayscale="convert", images=ImageLimits()))
    assert len(decodes) == 10 + len(flips)
    flipped_before = {r.item: r for r in before if r.augmentation == "hflip"}
    for flip in flips:  # the same flipped images, byte for byte
        with open(flip.processed_path, "rb") as now, \
                open(flipped_before[flip.item].processed_path, "rb") as then:
            assert now.read() == then.read()
