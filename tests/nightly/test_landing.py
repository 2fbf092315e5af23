"""Labelled images landing: what counts, when a batch is complete, what started a night."""

import json
import shutil
from pathlib import Path

from tasks.core.config import SourceConfig
from tasks.core.operations_config import TriggerConfig
from tasks.demo.sample_data import generate
from tasks.nightly.landing import (
    LandingWatch,
    labelled_images,
    landed_since,
    started_by_line,
    what_started,
)

TRIGGER = TriggerConfig(quiet_seconds=10, min_new_images=3)


def voc_source(tmp_path, count: int = 4):
    generate(tmp_path / "made", count=count, seed=1, troubles=False)
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    (source / "annotations").mkdir()
    return tmp_path / "made", source, SourceConfig(format="voc", images=source / "images",
                                                  annotations=source / "annotations")


def land(made, source, stems, xml: bool = True) -> None:
    """Copy the named images (and, unless told not to, their XMLs) into the source."""
    for stem in stems:
        image = next((made / "images").glob(f"{stem}.*"))
        shutil.copy(image, source / "images" / image.name)
        if xml:
            shutil.copy(made / "annotations" / f"{stem}.xml", source / "annotations")


def stems(made, count):
    return sorted(p.stem for p in (made / "annotations").glob("*.xml"))[:count]


def never_running():
    return False


def test_an_image_counts_once_its_annotation_is_there_and_a_relabel_counts_again(tmp_path):
    made, source, config = voc_source(tmp_path)
    first, second = stems(made, 2)
    land(made, source, [first], xml=False)  # LabelImg writes the XML after the image
    assert labelled_images(config) == {}
    land(made, source, [first])
    before = labelled_images(config)
    assert [p.rsplit("/", 1)[-1].split(".")[0] for p in before] == [first]
    land(made, source, [second])
    (source / "annotations" / f"{first}.xml").write_text(
        (source / "annotations" / f"{first}.xml").read_text().replace("<pose>", "<pose> "))
    assert len(landed_since(before, labelled_images(config))) == 2  # one new, one relabelled


def test_images_and_annotations_pair_by_folder_as_ingest_pairs_them(tmp_path):
    """`day2/IMG_0001.jpg` is not labelled by `day1/IMG_0001.xml`; it lands with its own XML."""
    made, source, config = voc_source(tmp_path, count=2)
    first, second = stems(made, 2)
    image = next((made / "images").glob(f"{first}.*"))
    for day in ("day1", "day2"):
        (source / "images" / day).mkdir()
        shutil.copy(image, source / "images" / day / f"IMG_0001{image.suffix}")
    (source / "annotations" / "day1").mkdir()
    shutil.copy(made / "annotations" / f"{first}.xml", source / "annotations" / "day1" / "IMG_0001.xml")
    before = labelled_images(config)
    assert sorted(Path(p).relative_to(source / "images").as_posix() for p in before) == [
        f"day1/IMG_0001{image.suffix}"]
    (source / "annotations" / "day2").mkdir()
    shutil.copy(made / "annotations" / f"{first}.xml", source / "annotations" / "day2" / "IMG_0001.xml")
    assert [Path(p).relative_to(source / "images").as_posix()
            for p in landed_since(before, labelled_images(config))] == [f"day2/IMG_0001{image.suffix}"]
    # A flat annotations folder still labels the one image of its stem anywhere (as ingest does).
    other = next((made / "images").glob(f"{second}.*"))
    (source / "images" / "day3").mkdir()
    shutil.copy(other, source / "images" / "day3" / other.name)
    shutil.copy(made / "annotations" / f"{second}.xml", source / "annotations")
    assert str(source / "images" / "day3" / other.name) in labelled_images(config)


def test_a_batch_is_complete_after_quiet_seconds_with_enough_images(tmp_path):
    made, source, config = voc_source(tmp_path, count=6)
    names = stems(made, 6)
    watch = LandingWatch.starting_now(config, TRIGGER)
    land(made, source, names[:2])
    watch.changed(now=100)
    assert watch.batch(105, never_running) is None  # not quiet yet
    assert watch.batch(111, never_running) is None  # quiet, but 2 < 3: waits for more
    land(made, source, names[2:4])
    watch.changed(now=200)
    assert watch.batch(205, never_running) is None
    batch = watch.batch(211, never_running)
    assert batch is not None and len(batch.images) == 4  # both landings together
    payload = batch.payload("plant")
    assert payload["images"] == 4 and payload["line"] == "plant" and len(payload["examples"]) == 4
    assert watch.batch(300, never_running) is None  # announced: the sum starts again
    land(made, source, names[4:6])
    watch.changed(now=400)
    assert watch.batch(411, never_running) is None  # 2 new since the batch


def test_landings_during_a_night_make_one_batch_once_it_has_ended(tmp_path):
    made, source, config = voc_source(tmp_path, count=8)
    names = stems(made, 8)
    watch = LandingWatch.starting_now(config, TRIGGER)
    running = {"night": True}
    asked = []

    def night_running():
        asked.append(1)
        return running["night"]

    for at, batch in ((100, names[:4]), (200, names[4:8])):
        land(made, source, batch)
        watch.changed(now=at)
        assert watch.batch(at + 11, night_running) is None
    running["night"] = False
    batch = watch.batch(300, night_running)
    assert batch is not None and len(batch.images) == 8
    assert watch.batch(301, night_running) is None
    assert len(asked) == 3  # asked only when a batch was otherwise complete


def test_what_is_there_when_the_watch_starts_is_not_a_landing(tmp_path):
    made, source, config = voc_source(tmp_path)
    land(made, source, stems(made, 4))
    watch = LandingWatch.starting_now(config, TRIGGER)
    watch.changed(now=0)
    assert watch.batch(100, never_running) is None


def test_coco_counts_the_images_its_json_names(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (images / name).write_bytes(b"jpeg")
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"},
                                           {"id": 2, "file_name": "b.jpg"}]}))
    config = SourceConfig(format="coco", images=images, annotations=coco)
    assert sorted(p.rsplit("/", 1)[-1] for p in labelled_images(config)) == ["a.jpg", "b.jpg"]
    coco.write_text('{"images": [')  # being written
    assert labelled_images(config) == {}


def test_a_night_says_what_started_it():
    by_event = what_started({"event": "defectflow.images.landed", "event_id": "e-1", "images": 5,
                             "examples": ["a.jpg", "b.jpg"]}, auto_scheduled=False)
    assert started_by_line(by_event) == ("started by the event defectflow.images.landed (e-1): "
                                         "5 labelled images landed (a.jpg, b.jpg, ...)")
    assert what_started(None, auto_scheduled=True) == {"by": "schedule"}
    assert "schedule" in started_by_line({"by": "schedule"})
    assert what_started(None, auto_scheduled=False) == {"by": "hand"}


def test_the_source_is_not_listed_while_a_night_runs(tmp_path, monkeypatch):
    import tasks.nightly.landing as landing

    made, source, config = voc_source(tmp_path, count=4)
    watch = LandingWatch.starting_now(config, TRIGGER)
    listed = []
    real = landing.labelled_images
    monkeypatch.setattr(landing, "labelled_images", lambda src: listed.append(1) or real(src))
    land(made, source, stems(made, 4))
    watch.changed(now=100)
    for second in range(111, 171):  # a minute of ticks during a night
        assert watch.batch(second, lambda: True) is None
    assert listed == []
    assert len(watch.batch(171, never_running).images) == 4 and listed == [1]


def test_a_batch_held_during_a_night_outlives_a_restart_of_the_watch(tmp_path):
    """serve killed while it holds a batch (a night runs) and started again: what it had seen
    is read back from the work dir, so the held images are still new and make one batch."""
    from tasks.nightly.landing import WATCH_STATE

    made, source, config = voc_source(tmp_path, count=6)
    state = tmp_path / "work" / WATCH_STATE
    watch = LandingWatch.starting_now(config, TRIGGER, state, "plant")
    land(made, source, stems(made, 4))
    watch.changed(now=100)
    assert watch.batch(111, lambda: True) is None  # held: a night runs
    restarted = LandingWatch.starting_now(config, TRIGGER, state, "plant")  # killed, started again
    restarted.changed(now=0)  # the watch looks at its folders when it starts
    batch = restarted.batch(11, never_running)
    assert batch is not None and len(batch.images) == 4
    [pending] = restarted.pending
    assert pending["payload"]["images"] == 4 and pending["payload"]["line"] == "plant"
    again = LandingWatch.starting_now(config, TRIGGER, state, "plant")  # and once more
    again.changed(now=0)
    assert again.batch(11, never_running) is None and again.pending == [pending]
