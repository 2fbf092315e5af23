"""Cache keys: free of the flow run id, and kept where the results are (not in the cwd)."""

import pytest

from tasks.core import caching
from tasks.dataset.augment import augment_task
from tasks.dataset.budget import budget_task
from tasks.dataset.loc_tokens import loc_targets_task
from tasks.dataset.publish import publish_task
from tasks.dataset.split import split_task
from tasks.demo.sample_data import generate
from tasks.evaluation.evaluate import evaluate_task
from tasks.images.shard import process_images_task
from tasks.ingest.ingest import ingest_task, shard_task
from tasks.training.train import train_task

CACHED_TASKS = (ingest_task, shard_task, process_images_task, split_task, augment_task,
                budget_task, loc_targets_task, publish_task, train_task, evaluate_task)


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


@pytest.mark.usefixtures("prefect_server")
def test_a_prepare_run_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    from flows.prepare import prepare

    generate(tmp_path / "source", count=6, size=32, seed=3, troubles=False)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nsource: {{format: voc, images: {tmp_path / 'source' / 'images'}, "
                      f"annotations: {tmp_path / 'source' / 'annotations'}}}\ngrayscale: convert\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    prepare(str(config), str(tmp_path / "out"), str(tmp_path / "home"))
    assert (tmp_path / "out" / "prepare_report.json").exists()
    assert list(cwd.iterdir()) == [], "cache records leaked into the working directory"


def library_policy(task):
    return next(p for p in task.cache_policy.policies if type(p).__name__ == "LibraryVersions")


@pytest.mark.parametrize(("task", "library"), [
    (process_images_task, "pillow"), (augment_task, "pillow"), (publish_task, "datasets"),
    (train_task, "transformers"), (train_task, "peft"), (train_task, "torch"),
    (evaluate_task, "transformers"),
])
def test_a_new_version_of_a_library_that_shapes_a_step_is_a_cache_miss(task, library, monkeypatch):
    policy = library_policy(task)
    before = policy.compute_key(None, {}, {})
    real = caching.package_version
    monkeypatch.setattr(caching, "package_version",
                        lambda name: "999.0" if name == library else real(name))
    caching._library_versions.cache_clear()  # the upgrade, as the next process reads it
    try:
        assert policy.compute_key(None, {}, {}) != before
    finally:
        caching._library_versions.cache_clear()  # (the real versions again, for other tests)


def test_library_versions_are_read_once_per_process(monkeypatch):
    # Every task run's key asks (~400 a night at 100k images); a library upgraded under a
    # running process is not the one loaded in it, so the first answer stays the true one.
    asked = []
    real = caching.package_version
    monkeypatch.setattr(caching, "package_version", lambda name: asked.append(name) or real(name))
    caching._library_versions.cache_clear()
    try:
        policy = library_policy(publish_task)
        first = policy.compute_key(None, {}, {})
        assert policy.compute_key(None, {}, {}) == first
        assert sorted(asked) == sorted(policy.libraries)
        caching.library_versions(policy.libraries)["datasets"] = "mutated by a caller"
        assert policy.compute_key(None, {}, {}) == first
    finally:
        caching._library_versions.cache_clear()


def test_an_evaluation_limit_is_not_part_of_its_cache_key():
    # A result is as good whatever the time limit was: a longer limit must not evaluate again.
    inputs_policy, = [p for p in evaluate_task.cache_policy.policies if type(p).__name__ == "Inputs"]
    key = lambda **inputs: inputs_policy.compute_key(None, {"num_beams": 1, **inputs}, {})  # noqa: E731
    assert key(timeout_minutes=5) == key(timeout_minutes=120)
    assert key(timeout_minutes=5) != key(timeout_minutes=5, num_beams=3)


KEY_OF_INGEST = """
import sys
from prefect.cache_policies import INPUTS
from tasks.core.config import load_config

config = load_config(sys.argv[1])
print(INPUTS.compute_key(None, {"source": config.source, "rules": config.label_rules,
                                "manifests_dir": "/m", "labels": config.labels}, {}))
"""


def test_the_ingest_cache_key_is_the_same_in_every_new_process(tmp_path):
    import os
    import subprocess
    import sys

    from tests.support import REPO

    config = tmp_path / "line.yaml"
    config.write_text("name: line\nsource: {format: voc, images: i, annotations: a}\n"
                      "labels: [crazing, inclusion, patches, pitted_surface, rolled-in_scale, "
                      "scratches]\nlabel_map: {Crazing: crazing}\n")
    keys = set()
    for seed in ("1", "2", "3", "4"):  # a set's order, so its pickled bytes, moved with the seed
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", KEY_OF_INGEST, str(config)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        keys.add(done.stdout.strip())
    assert len(keys) == 1, keys
