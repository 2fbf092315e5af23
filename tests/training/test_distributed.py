"""Training under torchrun: two CPU processes (gloo) train one model, rank 0 alone writes and
logs, a failed rank fails the step with its error, a DDP checkpoint resumes, two nodes meet."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tasks.core.config import ModelConfig, TrainConfig
from tasks.core.model_config import DistributedConfig
from tasks.core.records import Box
from tasks.nightly.server import free_port
from tasks.scoring.score import DetectionScores, interleaved, with_coco
from tasks.training.distributed import (
    JOIN,
    RanksFailed,
    rank_log_line,
    rank_log_text,
    root_cause,
    torchrun_command,
)
from tasks.training.run_folder import last_checkpoint, run_identity
from tasks.training.trainer import FAIL_ENV, FAIL_RANK_ENV
from tests.support import REPO, logs_of


def _train(distributed: DistributedConfig, **changes) -> TrainConfig:
    return TrainConfig(lr=5e-3, batch_size=4, eval_steps=4, max_steps=8, seed=1, select_images=8,
                       patience=10, distributed=distributed).model_copy(update=changes)


def test_split_scores_gathered_again_are_the_scores_of_one_process():
    labels = ["scratch", "spot"]
    rows = [(f"img{i}", 64, 64, [Box(x1=i, y1=i, x2=i + 20, y2=i + 20, label=labels[i % 2])])
            for i in range(7)]
    guesses = [([Box(x1=i + (i % 3), y1=i, x2=i + 20, y2=i + 21, label=labels[(i // 2) % 2])],
                [0.9 - 0.1 * i]) for i in range(7)]

    def scores(indices):
        part = DetectionScores(labels=labels)
        part.truths = [rows[i] for i in indices]
        part.predictions = [guesses[i] for i in indices]
        return part

    one_process = with_coco(scores(range(7)))
    for world in (2, 3):
        gathered = interleaved([with_coco(scores(range(rank, 7, world))) for rank in range(world)])
        assert gathered.truths == one_process.truths  # the rows' own order: same image ids
        assert gathered.coco == one_process.coco and 0 < gathered.map50 < 1


def test_the_launcher_command_for_one_machine_and_for_node_one_of_two():
    one = torchrun_command(DistributedConfig(nproc_per_node=2), 0, "/run/launch.json")
    assert one[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in one
    assert "--standalone" in one and one[-3:] == ["-m", "tasks.training.rank", "/run/launch.json"]
    two = torchrun_command(DistributedConfig(nnodes=2, rdzv_endpoint="10.0.0.5:29400",
                                             join_timeout_minutes=2), 1, JOIN)
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=static",
            "--rdzv-endpoint=10.0.0.5:29400", "--rdzv-conf=timeout=120"} <= set(two)
    assert "--standalone" not in two and two[-1] == JOIN
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        DistributedConfig(nnodes=2)


def test_rank_zero_log_records_survive_the_pipe_and_the_root_cause_is_found():
    assert rank_log_line(rank_log_text(30, "two\nlines")) == (30, "two\nlines")
    assert rank_log_line("a library's print") == (20, "a library's print")
    report = ("noise\n" + "=" * 20 + "\nRoot Cause (first observed failure):\n[0]:\n  rank: 1\n"
              "  traceback : RuntimeError: injected\n" + "=" * 20 + "\n")
    assert root_cause(report).startswith("Root Cause") and "rank: 1" in root_cause(report)
    assert root_cause("a\nb\nlast words") .endswith("last words")


def test_the_world_size_is_part_of_the_run_identity_and_the_endpoint_is_not():
    model = ModelConfig(checkpoint="tiny")
    alone = run_identity("f", model, _train(None), None)
    two = run_identity("f", model, _train(DistributedConfig(nproc_per_node=2)), None)
    elsewhere = run_identity("f", model, _train(DistributedConfig(
        nproc_per_node=1, nnodes=2, rdzv_endpoint="h:1")), None)
    moved = run_identity("f", model, _train(DistributedConfig(
        nproc_per_node=1, nnodes=2, rdzv_endpoint="other:2")), None)
    assert len({alone, two}) == 2 and two == elsewhere == moved


def test_a_checkpoint_saved_only_in_part_is_removed_not_resumed(tmp_path):
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # torn
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]


@pytest.mark.slow
def test_two_cpu_processes_train_one_model_and_the_night_log_says_each_evaluation_once(
        prefect_server, synthetic_dataset, tmp_path):
    from prefect import flow

    from tasks.scoring.generation import predict_batch
    from tasks.training.models import load_finetuned_detector
    from tasks.training.train import train_task

    train = _train(DistributedConfig(nproc_per_node=2))

    @flow(name="ddp-night")
    def night() -> dict:
        return train_task.with_options(refresh_cache=True)(
            dataset_dir=str(synthetic_dataset), fingerprint="ddp", out_dir=str(tmp_path),
            model_config=ModelConfig(checkpoint="tiny"), train_config=train)

    state = night(return_state=True)
    summary = state.result()
    assert summary["world_size"] == 2 and summary["global_batch"] == 8
    assert summary["global_step"] == 8 and summary["select"] == "map50"
    assert [step for step, _ in summary["curves"]["val_map50"]] == [4, 8]
    logs = logs_of(state.state_details.flow_run_id)
    evaluations = [line for line in logs if line.startswith("step ")]
    assert [line.split(" |")[0] for line in evaluations] == ["step 4", "step 8"], logs
    assert "val mAP50" in evaluations[0]
    assert any("global batch 2 x 4 = 8" in line for line in logs), logs
    assert any("starting 2 training processes" in line for line in logs), logs
    # Rank 0 alone wrote the run folder; what it wrote loads and predicts.
    assert json.loads((tmp_path / "train_summary.json").read_text())["world_size"] == 2
    processor, model = load_finetuned_detector(tmp_path / "model")
    assert type(model).__name__ == "PeftModel"
    from PIL import Image

    predictions = predict_batch(model, processor, [Image.new("RGB", (64, 64), 90)], None,
                                max_new_tokens=16)
    assert len(predictions) == 1


@pytest.mark.slow
def test_a_failed_rank_fails_the_step_with_its_error_and_the_ddp_checkpoint_resumes(
        synthetic_dataset, tmp_path, monkeypatch):
    from tasks.training.train import train_step

    train = _train(DistributedConfig(nproc_per_node=2, timeout_minutes=2))
    monkeypatch.setenv(FAIL_ENV, "4")
    monkeypatch.setenv(FAIL_RANK_ENV, "1")  # rank 1 raises after checkpoint-4; rank 0 does not
    with pytest.raises(RanksFailed) as failed:
        train_step(synthetic_dataset, tmp_path, ModelConfig(checkpoint="tiny"), train)
    assert "injected training failure after step 4" in str(failed.value)
    assert "rank: 1" in str(failed.value)
    assert last_checkpoint(tmp_path / "checkpoints").endswith("checkpoint-4")
    assert not (tmp_path / "train_summary.json").exists()

    monkeypatch.delenv(FAIL_ENV)
    summary = train_step(synthetic_dataset, tmp_path, ModelConfig(checkpoint="tiny"), train)
    assert summary["resumed_from_step"] == 4 and summary["global_step"] == 8
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [4, 8]



@pytest.mark.slow
def test_a_distributed_training_that_runs_out_of_time_is_timed_out_not_retried(
        synthetic_dataset, tmp_path):
    """A rank past train.timeout_minutes fails the step as StepTimedOut, as one process does:
    the train task's retry condition then does not run it again for as long once more."""
    from types import SimpleNamespace

    from tasks.core.deadline import StepTimedOut
    from tasks.training.train import _worth_retrying, train_step

    train = _train(DistributedConfig(nproc_per_node=2, timeout_minutes=2), timeout_minutes=0.001)
    with pytest.raises(StepTimedOut) as timed_out:
        train_step(synthetic_dataset, tmp_path, ModelConfig(checkpoint="tiny"), train)
    assert "train.timeout_minutes" in str(timed_out.value)

    def raised(error: Exception):
        def result():
            raise error
        return SimpleNamespace(result=result)

    assert not _worth_retrying(None, None, raised(timed_out.value))
    assert _worth_retrying(None, None, raised(RanksFailed("a rank crashed")))


@pytest.mark.slow
@pytest.mark.scenario  # two-node training: make scenarios
def test_two_nodes_on_one_machine_meet_and_finish_one_training(synthetic_dataset, tmp_path):
    from tasks.training.train import train_step

    endpoint = f"127.0.0.1:{free_port()}"
    config = tmp_path / "line.yaml"
    config.write_text(
        "name: two-nodes\n"
        f"source: {{format: voc, images: {tmp_path}, annotations: {tmp_path}}}\n"
        "train:\n"
        f"  distributed: {{nnodes: 2, rdzv_endpoint: '{endpoint}', join_timeout_minutes: 3,"
        " timeout_minutes: 3}\n")
    # Node 1 first, as a second machine's `defectflow train-node` would: it waits for node 0.
    node_one = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", str(tmp_path / "home"), "train-node",
         str(config), "--node-rank", "1"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    from tasks.core.config import load_config

    train = load_config(config).train.model_copy(update={
        "lr": 5e-3, "batch_size": 4, "eval_steps": 4, "max_steps": 8, "seed": 1,
        "select_images": 8})
    result: dict = {}
    node_zero = threading.Thread(target=lambda: result.update(train_step(
        synthetic_dataset, tmp_path / "run", ModelConfig(checkpoint="tiny"), train)))
    node_zero.start()
    node_zero.join(600)
    output, _ = node_one.communicate(timeout=120)
    assert node_one.returncode == 0, output[-3000:]
    assert "node 1: the training ended" in output
    assert result["world_size"] == 2 and result["global_step"] == 8, result
    assert (tmp_path / "run" / "model" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_the_ranks_end_when_the_process_that_launched_them_is_killed(synthetic_dataset, tmp_path):
    import time

    import psutil

    code = ("from tasks.core.config import ModelConfig, TrainConfig\n"
            "from tasks.core.model_config import DistributedConfig\n"
            "from tasks.training.train import train_step\n"
            f"train_step({str(synthetic_dataset)!r}, {str(tmp_path)!r}, ModelConfig(checkpoint='tiny'),\n"
            "           TrainConfig(lr=5e-3, batch_size=4, eval_steps=10000, max_steps=100000,\n"
            "                       distributed=DistributedConfig(nproc_per_node=2)))\n")
    launcher = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    left: list = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until both ranks (torchrun's children) run
            left = psutil.Process(launcher.pid).children(recursive=True)
            if sum(p.ppid() != launcher.pid for p in left) == 2:
                break
            time.sleep(0.5)
        assert len(left) >= 3, "torchrun and its two ranks never started"
        time.sleep(5)
        launcher.kill()  # SIGKILL: the night's process alone, as a crash or the OOM killer does
        launcher.wait()
        gone, alive = psutil.wait_procs(left, timeout=60)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        for process in [*left, launcher]:
            try:
                process.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
