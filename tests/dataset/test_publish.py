"""Publishing: the Hub layout on disk (read back by `datasets`) and the Hub path (a stand-in)."""

from pathlib import Path

import datasets
import pytest
from PIL import Image

from tasks.core.config import PublishConfig
from tasks.core.records import Box, Sample, write_manifest
from tasks.core.retry import with_backoff
from tasks.dataset.loc_tokens import with_target
from tasks.dataset.publish import is_published, publish_step


def make_samples(tmp_path: Path) -> list[Sample]:
    samples = []
    for n, split in enumerate(["train", "train", "validation", "test"]):
        path = tmp_path / f"img{n}.png"
        Image.new("RGB", (50, 40), (n * 40, 10, 10)).save(path)
        boxes = [Box(x1=5, y1=5, x2=25, y2=20, label="dent")] if n != 3 else []
        samples.append(Sample(item=f"img{n}.xml", image_path=str(path), source="x", sha256=f"{n:064d}",
                              width=50, height=40, mode="RGB", boxes=boxes, split=split))
    return [with_target(sample) for sample in samples]


def test_local_publish_is_read_back_by_load_dataset(tmp_path):
    manifest = write_manifest(make_samples(tmp_path), tmp_path / "m", "t")
    out = publish_step(manifest, "demo", PublishConfig(), tmp_path / "dataset")
    assert out.rows == {"train": 2, "validation": 1, "test": 1}
    assert is_published(tmp_path / "dataset", out.fingerprint)
    loaded = datasets.load_dataset(str(tmp_path / "dataset"))
    assert set(loaded) == {"train", "validation", "test"}
    row = loaded["train"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (50, 40)
    assert row["prompt"] == "<OD>"
    assert row["target"] == "dent<loc_100><loc_125><loc_500><loc_500>"
    assert row["boxes"] == [[5.0, 5.0, 25.0, 20.0]] and row["labels"] == ["dent"]
    assert loaded["test"][0]["target"] == ""  # a negative image: empty target
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert "configs:" in card.replace('"', "") and out.fingerprint in card


def test_two_datasets_in_same_named_folders_do_not_share_the_datasets_cache(tmp_path):
    # `datasets` keys a local folder's cache on its name and data-file patterns; the
    # fingerprint in the file names keeps a new dataset from being served the old one.
    for name, count in (("a", 4), ("b", 2)):
        (tmp_path / name).mkdir()
        manifest = write_manifest(make_samples(tmp_path / name)[:count], tmp_path / name, "t")
        publish_step(manifest, "demo", PublishConfig(), tmp_path / name / "dataset")
        loaded = datasets.load_dataset(str(tmp_path / name / "dataset"))
        assert sum(len(split) for split in loaded.values()) == count
    assert set(loaded) == {"train"}  # empty splits are left out, not written empty


class FlakyHub:
    """Records calls like HfApi; fails `failures` times with a 503 before each call succeeds."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls: list[tuple[str, dict]] = []
        self.commits: list[dict] = []

    def _maybe_fail(self):
        if self.failures > 0:
            self.failures -= 1
            error = OSError("503 Service Unavailable")
            error.response = type("Response", (), {"status_code": 503})()
            raise error

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return repo_id

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        self._maybe_fail()
        self.commits.append(kwargs)
        return type("Commit", (), {"oid": "abc123"})()


def test_hub_publish_retries_transient_errors_and_commits_once(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    manifest = write_manifest(make_samples(tmp_path), tmp_path / "m", "t")
    hub = FlakyHub(failures=2)
    config = PublishConfig(target="hub", repo_id="org/defects", private=True)
    out = publish_step(manifest, "demo", config, tmp_path / "dataset", api=hub)
    assert out.hub_revision == "abc123"
    assert len(hub.commits) == 1
    assert [name for name, _ in hub.calls].count("upload_folder") == 3
    commit = hub.commits[0]
    assert commit["repo_id"] == "org/defects" and commit["repo_type"] == "dataset"
    assert Path(commit["folder_path"]) == tmp_path / "dataset"
    assert hub.calls[0][1]["private"] is True


def test_backoff_doubles_and_gives_up_on_permanent_errors():
    delays = []
    attempts = {"n": 0}

    def fails_then_works():
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("reset")
        return "ok"

    assert with_backoff(fails_then_works, sleep=delays.append, log=lambda m: None) == "ok"
    assert delays == [2.0, 4.0]

    def forbidden():
        error = OSError("401")
        error.response = type("Response", (), {"status_code": 401})()
        raise error

    with pytest.raises(OSError):
        with_backoff(forbidden, sleep=delays.append, log=lambda m: None)
    assert delays == [2.0, 4.0]  # no retry for a bad token


def many_samples(tmp_path: Path, count: int, start: int = 0) -> list[Sample]:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    samples = []
    for n in range(start, start + count):
        path = folder / f"img{n:05d}.png"
        Image.new("RGB", (16, 12), (n % 256, n // 256, 7)).save(path)
        samples.append(with_target(Sample(
            item=f"img{n:05d}.xml", image_path=str(path), source="x", sha256=f"{n:064d}",
            width=16, height=12, mode="RGB", split="train" if n % 5 else "test",
            boxes=[Box(x1=1, y1=1, x2=9, y2=9, label="dent")])))
    return samples


def test_new_images_rewrite_only_the_parquet_files_they_fall_into(tmp_path):
    old = many_samples(tmp_path, 1500)
    first = publish_step(write_manifest(old, tmp_path / "m", "t"), "demo", PublishConfig(),
                         tmp_path / "dataset")
    files = sorted((tmp_path / "dataset" / "data").glob("*.parquet"))
    assert first.files == {"parquet_written": len(files)} and len(files) > 4
    inodes = {p.name.rsplit("-", 1)[1]: p.stat().st_ino for p in files}

    new = many_samples(tmp_path, 3, start=1500)  # 0.2 % more: they land in the last files
    both = sorted(old + new, key=lambda s: s.item)
    second = publish_step(write_manifest(both, tmp_path / "m", "t"), "demo", PublishConfig(),
                          tmp_path / "dataset")
    assert second.rows == {"train": 1202, "validation": 0, "test": 301}
    assert second.files["parquet_written"] <= 2  # the last file of each split, at most
    assert second.files["parquet_reused"] == len(files) - second.files["parquet_written"]
    kept = {p.name.rsplit("-", 1)[1]: p.stat().st_ino
            for p in (tmp_path / "dataset" / "data").glob("*.parquet")}
    assert sum(kept.get(digest) == inode for digest, inode in inodes.items()) == \
        second.files["parquet_reused"]  # taken over: the very same files, not copies

    # Read back, the publication is the one a fresh write makes, row for row and in order.
    fresh = publish_step(write_manifest(both, tmp_path / "m", "t"), "demo", PublishConfig(),
                         tmp_path / "fresh")
    assert fresh.files == {"parquet_written": len(kept)}
    for split in ("train", "test"):
        updated = datasets.load_dataset(str(tmp_path / "dataset"), split=split).remove_columns("image")
        written = datasets.load_dataset(str(tmp_path / "fresh"), split=split).remove_columns("image")
        assert updated.to_list() == written.to_list()
        assert updated["image_id"] == sorted(updated["image_id"])


def test_big_images_cut_files_by_bytes_and_a_new_one_changes_only_its_own_file():
    from tasks.dataset.parquet_files import BYTES_PER_FILE, file_groups

    def records(count: int, size: int, extra: tuple[str, ...] = ()) -> list[tuple[str, str, int]]:
        items = sorted([f"big_{n:04d}.xml" for n in range(count)] + list(extra))
        return [(item, f'{{"item": "{item}"}}', size) for item in items]

    big = list(file_groups(records(400, BYTES_PER_FILE // 4)))  # 4 images fill a file, on average
    assert 40 <= len(big) <= 200  # by rows alone (64 a file) these would be 6 to 7 files
    assert max(sum(size for *_, size in group) for group in big) <= 4 * BYTES_PER_FILE + BYTES_PER_FILE // 4
    small = list(file_groups(records(400, 20_000)))  # small images: ~64 a file, as before
    assert 3 <= len(small) <= 20

    grown = list(file_groups(records(400, BYTES_PER_FILE // 4, extra=("big_0200b.xml",))))
    changed = [group for group in grown if group not in big]
    assert len(changed) == 1 and "big_0200b.xml" in [item for item, *_ in changed[0]]


def test_publish_after_the_fingerprint_step_reads_each_line_once(tmp_path, monkeypatch):
    # A night runs the fingerprint step, then publish, on the same manifest: the publish takes
    # the fingerprint step's pass (fingerprint, classes, where each line goes) instead of
    # parsing every line's JSON a second time; it publishes the same dataset.
    from tasks.dataset import publish

    manifest = write_manifest(make_samples(tmp_path), tmp_path / "m", "t")
    alone = publish_step(manifest, "demo", PublishConfig(), tmp_path / "alone")
    parsed = []
    real = publish.from_json
    monkeypatch.setattr(publish, "from_json", lambda line: parsed.append(line) or real(line))
    fingerprint = publish.fingerprint_step(manifest)
    after = publish_step(manifest, "demo", PublishConfig(), tmp_path / "after")
    rows_parsed = 4  # `to_row` parses each written row
    assert len(parsed) == manifest.count + rows_parsed
    assert after.fingerprint == fingerprint == alone.fingerprint and after.rows == alone.rows
    assert (tmp_path / "after" / "README.md").read_text() == (tmp_path / "alone" / "README.md").read_text()

    # Taken once: a second publish (a retry) reads the manifest again, with the same answer.
    parsed.clear()
    again = publish_step(manifest, "demo", PublishConfig(), tmp_path / "again")
    assert len(parsed) == manifest.count + rows_parsed and again == after.model_copy(
        update={"folder": str(tmp_path / "again")})
