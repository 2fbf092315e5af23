"""The token budget: targets measured, dense images tiled (train) or kept whole to be scored
through tiles (test), and what cannot fit quarantined as target_too_long."""

import hashlib
from pathlib import Path

from PIL import Image

from tasks.core.config import TilingConfig
from tasks.core.records import Box, Sample, read_records, read_rejections, write_manifest
from tasks.dataset.budget import budget_step, target_tokens
from tasks.dataset.loc_tokens import loc_targets_step, od_target


def dense_sample(folder: Path, split: str, count: int = 300, size: int = 400) -> Sample:
    """`count` 12 px defects on a 20 px grid over a `size` px PCB-like image."""
    path = folder / f"dense-{split}.png"
    Image.new("RGB", (size, size), (90, 110, 90)).save(path)
    boxes = [Box(x1=2 + (n % 20) * 20, y1=2 + (n // 20) * 20, x2=14 + (n % 20) * 20,
                 y2=14 + (n // 20) * 20, label="solder_bridge") for n in range(count)]
    return Sample(item=f"dense-{split}.xml", image_path=str(path), source="x", boxes=boxes,
                  sha256=hashlib.sha256(path.read_bytes()).hexdigest(), width=size, height=size,
                  mode="RGB", image_format="PNG", split=split)


def run(tmp_path: Path, samples: list[Sample], tiling: TilingConfig | None, budget: int = 1024):
    manifest = write_manifest(samples, tmp_path / "manifests", "split")
    return budget_step(manifest, budget, "tiny", tmp_path / "manifests", tiling,
                       tmp_path / "store")


def test_a_target_over_the_budget_is_quarantined_without_tiling(tmp_path):
    dense = dense_sample(tmp_path, "train")
    assert target_tokens(od_target(dense.boxes, 400, 400)) > 1024
    check = run(tmp_path, [dense], None)
    assert [(r.item, r.reason) for r in read_rejections(check.rejected)] == [
        ("dense-train.xml", "target_too_long")]
    assert len(read_rejections(check.rejected_boxes)) == 300
    assert list(read_records(check.rows)) == []
    assert check.stats["over_budget"] == 1 and check.stats["max_tokens"] > 1024


def test_a_dense_training_image_becomes_tiles_each_within_the_budget_with_every_box(tmp_path):
    check = run(tmp_path, [dense_sample(tmp_path, "train")], TilingConfig(size=128, overlap=0.2))
    tiles = list(read_records(check.rows))
    assert len(tiles) == 16 and all(tile.tile_of == "dense-train.xml" for tile in tiles)
    for tile in tiles:
        assert target_tokens(od_target(tile.boxes, tile.width, tile.height)) <= 1024
        with Image.open(tile.processed_path) as pixels:  # the crop itself, made once
            assert pixels.size == (tile.width, tile.height) == (128, 128)
        assert all(0 <= b.x1 < b.x2 <= 128 and 0 <= b.y1 < b.y2 <= 128 for b in tile.boxes)
    [image] = read_records(check.images)
    lost = read_rejections(check.rejected_boxes)
    assert len(image.boxes) + len(lost) == 300 and lost == []
    assert check.stats["tiling"] == {"images": 1, "tiles": 16, "sliced_test_images": 0}
    assert read_rejections(check.rejected) == []


def test_a_dense_test_image_stays_whole_to_be_scored_through_tiles_and_has_no_target(tmp_path):
    check = run(tmp_path, [dense_sample(tmp_path, "test")], TilingConfig(size=128))
    [row] = read_records(check.rows)
    assert row.sliced and len(row.boxes) == 300 and (row.width, row.height) == (400, 400)
    [with_target] = read_records(loc_targets_step(check.rows, tmp_path / "manifests"))
    assert with_target.target is None  # never learnt from: no target over the budget anywhere


def test_an_image_whose_tiles_are_still_too_long_is_quarantined_with_the_numbers(tmp_path):
    check = run(tmp_path, [dense_sample(tmp_path, "train")], TilingConfig(size=300), budget=200)
    [rejection] = read_rejections(check.rejected)
    assert rejection.reason == "target_too_long" and "300 px tiles still need" in rejection.detail


def test_counting_without_a_local_tokenizer_never_loads_torch(tmp_path):
    """Prep's memory: a Hub checkpoint never downloaded is counted by the byte bound, and the
    lookup does not import transformers (which brings torch: ~900 MiB instead of ~300)."""
    import subprocess
    import sys

    code = ("import sys; from tasks.dataset.budget import target_tokenizer; "
            "print(target_tokenizer('florence-community/Florence-2-base')[1], "
            "'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                               "HF_HOME": str(tmp_path)})  # an empty Hub cache
    assert done.stdout.split()[-2:] == ["False", "False"], done.stdout


def test_a_second_run_answers_known_samples_from_the_memo_with_the_same_manifests(tmp_path, monkeypatch):
    import tasks.dataset.budget as budget_module
    from tasks.core.records import read_lines

    tiling = TilingConfig(size=128, overlap=0.2)
    samples = [dense_sample(tmp_path, split) for split in ("train", "test", "validation")]
    first = run(tmp_path, samples[:2], tiling)
    measured = []
    real = budget_module.budget_one
    monkeypatch.setattr(budget_module, "budget_one",
                        lambda sample, *a: measured.append(sample.item) or real(sample, *a))
    second = run(tmp_path, samples, tiling)
    assert measured == ["dense-validation.xml"]  # the two seen before: remembered
    monkeypatch.setattr(budget_module, "budget_one", real)
    fresh = budget_step(write_manifest(samples, tmp_path / "m", "split"), 1024, "tiny",
                        tmp_path / "m", tiling, tmp_path / "fresh-store")
    for name in ("rows", "images", "rejected", "rejected_boxes"):
        assert [line.replace("fresh-store", "store") for line in read_lines(getattr(fresh, name))] \
            == list(read_lines(getattr(second, name)))
    assert second.stats == fresh.stats and first.stats["tiling"]["tiles"] == 16
