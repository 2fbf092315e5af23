from tasks.core.records import Sample, write_manifest
from tasks.ingest.ingest import shard_step


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
