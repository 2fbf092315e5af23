"""A folder deleted and made again is a new generation, and every prepare step's cache key holds
the generations of the folders it writes into (so a result naming their files is not reused)."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.core.caching import CACHE_POLICY, GENERATION_FILE, folder_generation
from tasks.dataset.augment import augment_task
from tasks.dataset.budget import budget_task
from tasks.dataset.loc_tokens import loc_targets_task
from tasks.dataset.split import split_task
from tasks.images.shard import process_images_task
from tasks.ingest.ingest import ingest_task, shard_task


def test_a_folder_keeps_its_generation_until_it_is_deleted(tmp_path):
    folder = tmp_path / "home" / "manifests"
    first = folder_generation(folder)  # made, with its marker, when first seen
    assert (folder / GENERATION_FILE).read_text() == first
    assert folder_generation(folder) == first
    (folder / "split-1.jsonl").write_text("{}\n")
    assert folder_generation(folder) == first
    shutil.rmtree(folder)
    folder.mkdir()  # made again (by a step, or by hand)
    assert folder_generation(folder) != first


def test_runs_that_meet_a_new_folder_at_once_agree_on_its_generation(tmp_path):
    folders = [tmp_path / f"store-{n}" for n in range(20)]
    with ThreadPoolExecutor(8) as pool:
        seen = [list(pool.map(folder_generation, [folder] * 8)) for folder in folders]
    assert all(len(set(ids)) == 1 for ids in seen)
    assert len({ids[0] for ids in seen}) == len(folders)
    assert not [p for folder in folders for p in folder.iterdir() if p.name != GENERATION_FILE]


@pytest.mark.parametrize("folder", ["manifests_dir", "store_root"])
def test_a_step_key_changes_when_its_folder_is_made_again(folder, tmp_path):
    inputs = {"manifests_dir": str(tmp_path / "manifests"), "store_root": str(tmp_path / "store"),
              "shard_size": 16}
    before = CACHE_POLICY.compute_key(None, inputs, {})
    assert CACHE_POLICY.compute_key(None, inputs, {}) == before
    shutil.rmtree(inputs[folder])
    assert CACHE_POLICY.compute_key(None, inputs, {}) != before


def test_every_prepare_step_writing_a_folder_keys_on_its_generation():
    for task in (ingest_task, shard_task, process_images_task, split_task, budget_task,
                 augment_task, loc_targets_task):
        names = {type(p).__name__ for p in task.cache_policy.policies}
        assert "FolderGenerations" in names, task.name


def test_a_task_writing_no_folder_keeps_the_key_it_had_without_generations():
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    from tasks.core.caching import CodeVersion

    without = INPUTS + TASK_SOURCE + CodeVersion()
    assert CACHE_POLICY.compute_key(None, {"x": 1}, {}) == without.compute_key(None, {"x": 1}, {})
