"""The source fingerprint ("what is new?" of the nightly retrain) changes with any write to a
file, also one that keeps its size and has its mtime set back."""

import os
from pathlib import Path

import pytest

from tasks.core.config import SourceConfig
from tasks.ingest.ingest import source_fingerprint


def source(tmp_path: Path) -> SourceConfig:
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    annotations.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8 pixels of a \xff\xd9")
    (annotations / "a.xml").write_text("<annotation><object><name>scratch</name></object></annotation>")
    return SourceConfig(format="voc", images=images, annotations=annotations)


def past_the_ctime_of(path: Path) -> None:
    """Return once the filesystem's clock has moved past the file's ctime (its ticks can be a
    few milliseconds: a test edits right after writing, a person some time after)."""
    probe = path.parents[1] / ".clock"
    while True:
        probe.write_bytes(b"")
        ticked = probe.stat().st_ctime_ns > path.stat().st_ctime_ns
        probe.unlink()
        if ticked:
            return


def rewrite_keeping_size_and_mtime(path: Path, old: bytes, new: bytes) -> None:
    """What `touch -r` after an edit, or a copy tool that keeps times, leaves behind."""
    past_the_ctime_of(path)
    stat = path.stat()
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_a_same_size_edit_with_its_mtime_restored_is_new(tmp_path):
    config = source(tmp_path)
    before = source_fingerprint(config)
    assert source_fingerprint(config) == before  # nothing written: nothing new
    rewrite_keeping_size_and_mtime(config.images / "a.jpg", b"pixels of a", b"pixels of b")
    after_image = source_fingerprint(config)
    assert after_image != before
    rewrite_keeping_size_and_mtime(config.annotations / "a.xml", b"scratch", b"patches")
    assert source_fingerprint(config) not in (before, after_image)


def test_a_file_replaced_by_a_rename_with_the_same_size_and_mtime_is_new(tmp_path):
    config = source(tmp_path)
    image = config.images / "a.jpg"
    stat = image.stat()
    before = source_fingerprint(config)
    replacement = tmp_path / "a.jpg.part"  # a sync tool's temporary file, renamed over the old
    replacement.write_bytes(image.read_bytes().replace(b"pixels of a", b"pixels of c"))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(image)
    assert source_fingerprint(config) != before


def test_a_same_size_image_edit_with_its_mtime_restored_reaches_the_prepared_record(tmp_path):
    """Not only "something is new": the image step sees the new pixels, also through the VOC
    memo and the image step's memo of an earlier night (both keyed on the file's state)."""
    import io

    from PIL import Image

    from tasks.core.config import ImageLimits, load_config
    from tasks.core.records import read_samples
    from tasks.demo.sample_data import generate
    from tasks.images.shard import ImageStepConfig, process_images_step
    from tasks.ingest.ingest import ingest_step, shard_step
    from tests.support import demo_config

    source = tmp_path / "source"
    generate(source, count=4, size=32, seed=2, troubles=False)
    config_path = tmp_path / "c.yaml"
    config_path.write_text(demo_config(source))
    config = load_config(config_path)
    step = ImageStepConfig(grayscale="convert", images=ImageLimits())

    def prepared() -> dict[str, str]:
        ingested = ingest_step(config.source, config.label_rules, tmp_path / "manifests",
                               store_root=tmp_path / "store")
        [shard] = shard_step(ingested.candidates, 1000, tmp_path / "manifests")
        output = process_images_step(shard, step, tmp_path / "store", tmp_path / "manifests")
        return {s.item: s.sha256 for s in read_samples(output.kept)}

    before = prepared()
    image = sorted((source / "images").glob("*.jpg"))[0]
    old = image.read_bytes()
    encoded = io.BytesIO()
    Image.new("RGB", Image.open(image).size, (200, 10, 10)).save(encoded, "JPEG", quality=50)
    new = encoded.getvalue()
    assert len(new) < len(old)
    new += b"\0" * (len(old) - len(new))  # bytes after the JPEG's end: decoders ignore them
    past_the_ctime_of(image)
    stat = image.stat()
    image.write_bytes(new)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    after = prepared()
    changed = [item for item in before if after[item] != before[item]]
    assert len(changed) == 1 and image.stem in changed[0]


@pytest.mark.usefixtures("prefect_server")
def test_within_a_flow_run_the_key_and_the_ingest_read_one_listing(tmp_path, monkeypatch):
    """A night lists its source for the ingest's cache key and for the ingest: one listing per
    run (2 s each at 100,000 images), so the key says exactly what the ingest read."""
    from prefect import flow

    from tasks.core.labels import ANY_LABEL
    from tasks.ingest import ingest as ingest_module

    config = source(tmp_path)
    listings = []
    real = ingest_module.list_source
    monkeypatch.setattr(ingest_module, "list_source", lambda *a: listings.append(a) or real(*a))

    @flow
    def night() -> tuple[str, int]:
        key = ingest_module.SourceState().compute_key(None, {"source": config}, None)
        ingested = ingest_module.ingest_step(config, ANY_LABEL, tmp_path / "manifests")
        return key, ingested.images_found

    assert night() == (source_fingerprint(config), 1)
    assert len(listings) == 2  # one in the run, one outside it (nothing kept outside a run)
    listings.clear()
    night()  # the next run lists again: a file landed since would be seen
    assert len(listings) == 1
    # the ingest took the listing: nothing of this source is held after the run
    assert config.model_dump_json() not in ingest_module._run_listing
