"""The image workers (processes): the same outputs as the caller's thread makes, in the same
order; a worker that dies costs a retry in the caller's thread, never the run."""

import os
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest

import tasks.images.workers as workers
from tasks.core.config import ImageLimits, load_config
from tasks.core.records import read_lines
from tasks.demo.sample_data import generate
from tasks.images.shard import ImageStepConfig, process_images_step
from tasks.ingest.ingest import ingest_step, shard_step
from tests.support import demo_config

STEP = ImageStepConfig(grayscale="convert", images=ImageLimits(), flips=("hflip",))


@pytest.fixture(scope="module")
def big_shard(tmp_path_factory):
    """More new images than the workers' threshold, in one shard."""
    root = tmp_path_factory.mktemp("workers")
    generate(root / "source", count=workers.WORTH_A_WORKER + 6, size=32, seed=4, troubles=False)
    (root / "c.yaml").write_text(demo_config(root / "source"))
    config = load_config(root / "c.yaml")
    ingested = ingest_step(config.source, config.label_rules, root / "manifests")
    [shard] = shard_step(ingested.candidates, 10_000, root / "manifests")
    return shard, root


def outputs(output, store: str) -> dict:
    return {name: [line.replace(store, "<store>") for line in read_lines(getattr(output, name))]
            for name in ("kept", "dropped_grayscale", "rejected", "rejected_boxes")}


def test_images_processed_on_workers_come_out_as_this_thread_makes_them(big_shard, monkeypatch, tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the image workers are not used")
    shard, root = big_shard
    inline = process_images_step(shard, STEP, str(tmp_path / "inline"), tmp_path / "m1")
    assert workers.image_workers() is None  # not allowed: no process is started
    monkeypatch.setattr(workers, "_allowed", True)
    submitted = []
    real_submit = workers.image_workers().submit
    monkeypatch.setattr(workers.image_workers(), "submit",
                        lambda *a: submitted.append(a[1]) or real_submit(*a))
    on_workers = process_images_step(shard, STEP, str(tmp_path / "workers"), tmp_path / "m2")
    assert sum(len(chunk) for chunk in submitted) == shard.count  # every image went to a worker
    assert outputs(on_workers, str(tmp_path / "workers")) == outputs(inline, str(tmp_path / "inline"))
    assert on_workers.counters == inline.counters and inline.counters["flips_rendered"] > 0


class DeadPool:
    """A pool whose every worker has died."""

    def submit(self, *args):
        future = Future()
        future.set_exception(BrokenProcessPool("a worker was killed"))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_a_dead_worker_costs_a_retry_in_this_thread_not_the_run(big_shard, monkeypatch, tmp_path):
    shard, _ = big_shard
    inline = process_images_step(shard, STEP, str(tmp_path / "inline"), tmp_path / "m1")
    monkeypatch.setattr(workers, "image_workers", DeadPool)
    retried = process_images_step(shard, STEP, str(tmp_path / "retried"), tmp_path / "m2")
    assert outputs(retried, str(tmp_path / "retried")) == outputs(inline, str(tmp_path / "inline"))
