"""Cache keys: free of the flow run id, and kept where the results are (not in the cwd)."""

import os

from tasks.dataset.augment import augment_task
from tasks.dataset.loc_tokens import loc_targets_task
from tasks.dataset.publish import publish_task
from tasks.dataset.split import split_task
from tasks.images.shard import process_images_task
from tasks.ingest.ingest import ingest_task, shard_task
from tasks.training.train import train_task

CACHED_TASKS = (ingest_task, shard_task, process_images_task, split_task, augment_task,
                loc_targets_task, publish_task, train_task)


def test_no_cache_policy_writes_its_keys_somewhere_of_its_own():
    # A key_storage of its own (once set by a positional argument by mistake) put Prefect's
    # cache records in ./source, apart from the results they point at.
    for task in CACHED_TASKS:
        policies = getattr(task.cache_policy, "policies", [task.cache_policy])
        assert task.cache_policy.key_storage is None, task.name
        assert all(p.key_storage is None for p in policies), task.name


def test_no_policy_depends_on_the_run():
    for task in CACHED_TASKS:
        names = {type(p).__name__ for p in getattr(task.cache_policy, "policies", [])}
        assert "RunId" not in names and names >= {"Inputs", "TaskSource", "CodeVersion"}, task.name


def test_a_prepare_run_leaves_nothing_in_the_working_directory():
    assert not os.path.exists("source"), "cache records leaked into the working directory"
