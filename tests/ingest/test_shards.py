from tasks.core.records import Sample, write_manifest
from tasks.ingest.ingest import MAX_SHARDS, shard_size_for, shard_step


def samples(names):
    return [Sample(item=name, image_path=f"/x/{name}", source="s") for name in names]


def test_new_images_change_only_the_shards_they_fall_into(tmp_path):
    old = [f"img_{n:05d}.xml" for n in range(0, 2000, 2)]
    new = [f"img_{n:05d}.xml" for n in range(1, 40, 2)]  # 20 new names between old ones
    before = shard_step(write_manifest(samples(old), tmp_path, "c"), 16, tmp_path)
    after = shard_step(write_manifest(samples(old + new), tmp_path, "c"), 16, tmp_path)
    unchanged = {m.digest for m in before} & {m.digest for m in after}
    assert sum(m.count for m in before) == 1000 and sum(m.count for m in after) == 1020
    assert len(before) > 30
    # Only the shards that received the new names differ: the rest are the same manifests.
    assert len(before) - len(unchanged) <= 3


def test_a_large_line_has_at_most_about_max_shards_and_its_shards_merge_pairwise(tmp_path):
    # Prefect's cost is per task run: 100,000 images in shards of 256 were ~400 image tasks a
    # night, all Cached on an unchanged one. The size doubles as the line grows, and a doubled
    # size's shards are unions of consecutive smaller ones (its boundaries are a subset).
    assert shard_size_for(256, 1000) == 256 and shard_size_for(256, 32_768) == 256
    assert shard_size_for(256, 32_769) == 512 and shard_size_for(256, 100_000) == 1024
    names = [f"img_{n:05d}.xml" for n in range(3000)]
    first = names[:MAX_SHARDS * 8]  # shards of 8, as configured
    small = shard_step(write_manifest(samples(first), tmp_path, "c"), 8, tmp_path)
    grown = shard_step(write_manifest(samples(names), tmp_path, "c"), 8, tmp_path)  # of 32
    assert MAX_SHARDS / 2 < len(small) < 2 * MAX_SHARDS
    assert MAX_SHARDS / 2 < len(grown) < 2 * MAX_SHARDS  # not ~375 shards of 8
    assert sum(m.count for m in grown) == len(names)

    # Sizes are the configured one times a power of two: a larger size's hash boundaries are
    # among a smaller one's, so growing merges shards and never moves an image to another one.
    for images in (10, 5000, 40_000, 300_000, 2_000_000):
        ratio = shard_size_for(100, images) // 100
        assert shard_size_for(100, images) % 100 == 0 and ratio & (ratio - 1) == 0
