"""Fine-tuning: LoRA lowers the loss, a killed run resumes, the classifier trains and reloads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.core.config import ModelConfig, TrainConfig
from tasks.training.models import load_finetuned_detector
from tasks.training.train import lr_warning, train_step
from tasks.training.trainer import FAULT_ENV
from tests.support import REPO

pytestmark = [pytest.mark.slow, pytest.mark.trains]


def test_lora_training_lowers_the_loss_and_saves_a_loadable_adapter(synthetic_dataset, tmp_path):
    model = ModelConfig(checkpoint="tiny", merge=True)
    train = TrainConfig(lr=5e-3, batch_size=8, eval_steps=20, max_steps=60, seed=1)
    summary = train_step(synthetic_dataset, tmp_path, model, train)
    history = json.loads((tmp_path / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert summary["global_step"] == 60 and summary["lora"]
    # The best checkpoint was chosen by mAP50 on the validation split, generated and scored at
    # every evaluation as `evaluate` scores it.
    assert summary["metric_for_best_model"] == "map50" and summary["select"] == "map50"
    val_map50 = summary["curves"]["val_map50"]
    assert [step for step, _ in val_map50] == [20, 40, 60]
    best = max(val_map50, key=lambda point: point[1])  # the first of equals, as the Trainer keeps
    assert summary["best_metric"] == best[1]
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best[0]}")
    assert losses[-1] < losses[0] - 0.1, losses
    assert (tmp_path / "loss_curve.png").stat().st_size > 10_000
    assert (tmp_path / "model" / "adapter_config.json").exists()
    # What predict reads: the classes, the answer length, and the threshold validation chose.
    facts = json.loads((tmp_path / "model" / "defectflow.json").read_text())
    assert facts["labels"] == ["patch", "scratch", "spot"] and 16 < facts["max_new_tokens"] <= 1024
    # The tiny random model gives no right box on validation after 60 steps (mAP50 0 at every
    # evaluation): no threshold can be chosen from F1 0, and the model keeps the documented
    # default, saying so. The choice itself is tested with a scripted model
    # (tests/training/test_selection.py).
    from tasks.scoring.generation import DEFAULT_THRESHOLD

    assert summary["selected_on"] == "validation" and summary["best_metric"] == 0.0
    assert facts["threshold"]["source"] == "default"
    assert facts["threshold"]["threshold"] == DEFAULT_THRESHOLD and facts["threshold"]["per_class"] == {}
    processor, loaded = load_finetuned_detector(tmp_path / "model")
    assert type(loaded).__name__ == "PeftModel"
    merged = load_finetuned_detector(tmp_path / "merged")[1]
    assert type(merged).__name__ == "Florence2ForConditionalGeneration"
    # The merged weights compute what the adapter does.
    from PIL import Image

    inputs = processor(text=["<OD>"], images=[Image.new("RGB", (64, 64), 90)], return_tensors="pt")
    labels = processor.tokenizer(["spot<loc_1><loc_2><loc_3><loc_4>"], return_tensors="pt").input_ids
    with torch.no_grad():
        a = loaded(**inputs, labels=labels).loss
        b = merged(**inputs, labels=labels).loss
    assert torch.allclose(a, b, atol=1e-4)


def _train_in_subprocess(dataset: Path, out: Path, kill_after: int | None) -> subprocess.CompletedProcess:
    code = (
        "from tasks.core.config import ModelConfig, TrainConfig\n"
        "from tasks.training.train import train_step\n"
        f"train_step({str(dataset)!r}, {str(out)!r}, ModelConfig(checkpoint='tiny'),\n"
        "         TrainConfig(lr=5e-3, batch_size=4, eval_steps=4, max_steps=12, patience=10))\n"
    )
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    if kill_after:
        env[FAULT_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_killed_run_resumes_from_its_last_checkpoint(synthetic_dataset, tmp_path):
    killed = _train_in_subprocess(synthetic_dataset, tmp_path, kill_after=4)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL right after checkpoint-4
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-4"]
    assert not (tmp_path / "train_summary.json").exists()

    finished = _train_in_subprocess(synthetic_dataset, tmp_path, kill_after=None)
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 4  # continued, not restarted
    assert summary["global_step"] == 12
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [4, 8, 12]  # no step done twice
    names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert len(names) == len(set(names)) and "checkpoint-12" in names


def test_another_config_in_the_same_folder_starts_fresh_instead_of_resuming(synthetic_dataset, tmp_path):
    model = ModelConfig(checkpoint="tiny")
    train = TrainConfig(lr=5e-3, batch_size=8, eval_steps=4, max_steps=8, seed=1)
    first = train_step(synthetic_dataset, tmp_path, model, train)
    assert first["global_step"] == 8
    # Same folder, another learning rate: the old checkpoint-8 must not be taken for this run's
    # (it was: the Trainer resumed at max_steps, trained nothing, and saved the old model as new).
    second = train_step(synthetic_dataset, tmp_path, model, train.model_copy(update={"lr": 1e-3}))
    assert second["resumed_from_step"] == 0 and second["global_step"] == 8
    assert second["identity"] != first["identity"]
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [4, 8]


def test_only_a_run_of_the_same_identity_may_be_resumed(tmp_path):
    from tasks.training.run_folder import claim_output, run_identity

    model, train = ModelConfig(checkpoint="tiny"), TrainConfig()
    identity = run_identity("fingerprint-a", model, train, None)
    assert run_identity("fingerprint-b", model, train, None) != identity  # another dataset
    assert run_identity("fingerprint-a", model.model_copy(update={"checkpoint": "x/y"}), train,
                        None) != identity  # another base
    assert claim_output(tmp_path, identity) is False  # nothing to resume yet
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "tiny-base").mkdir()  # built for the labels of that run's dataset
    assert claim_output(tmp_path, identity) is True
    assert claim_output(tmp_path, run_identity("fingerprint-b", model, train, None)) is False
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tiny-base").exists()


def test_classifier_trains_and_reloads(synthetic_dataset, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = ModelConfig(kind="vit", checkpoint="tiny")
    train = TrainConfig(lr=1e-3, batch_size=8, eval_steps=10, max_steps=30)
    summary = train_step(synthetic_dataset, tmp_path, model, train)
    assert summary["kind"] == "vit" and summary["metric_for_best_model"] == "accuracy"
    # The accuracy the Trainer reports is what the saved model scores on the validation split.
    from tasks.evaluation.evaluate import evaluate_step

    metrics = evaluate_step(model, synthetic_dataset, tmp_path / "model", tmp_path / "eval",
                            split="validation")
    assert summary["eval_accuracy"] == pytest.approx(metrics["accuracy"])
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    AutoImageProcessor.from_pretrained(tmp_path / "model")
    # The saved model is the best checkpoint, weight for weight (transformers issue #48805:
    # without our workaround the Trainer's reload of a ViT checkpoint silently loads nothing).
    best = AutoModelForImageClassification.from_pretrained(summary["best_checkpoint"])
    for (name, a), (_, b) in zip(reloaded.state_dict().items(), best.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert sorted(reloaded.config.label2id) == summary["labels"]
    assert set(summary["labels"]) <= {"scratch", "spot", "patch", "passed"}


def test_image_label_rules():
    from tasks.training.classifier import image_label

    assert image_label([], "majority", "passed") == "passed"
    assert image_label(["spot", "scratch", "spot"], "majority", "passed") == "spot"
    assert image_label(["spot", "scratch"], "majority", "passed") == "scratch"  # tie: alphabetical
    assert image_label(["spot", "scratch", "scratch"], "first", "passed") == "spot"


def test_high_learning_rate_warns_for_pretrained_checkpoints_only():
    assert lr_warning(ModelConfig(), TrainConfig(lr=1e-3)) is not None
    assert lr_warning(ModelConfig(), TrainConfig(lr=5e-6)) is None
    assert lr_warning(ModelConfig(checkpoint="tiny"), TrainConfig(lr=1e-3)) is None


def test_no_learning_rate_warning_for_the_pretrained_tiny_base(tmp_path):
    from tasks.training.pretrain import DONE

    (tmp_path / DONE).write_text("{}")
    assert lr_warning(ModelConfig(checkpoint=str(tmp_path)), TrainConfig(lr=3e-3)) is None
    assert lr_warning(ModelConfig(checkpoint=str(tmp_path / "elsewhere")), TrainConfig(lr=3e-3))


def test_early_stopping_ends_a_run_that_stops_improving(synthetic_dataset, tmp_path):
    # A learning rate this small changes nothing: the validation loss never improves, so with
    # patience 1 the run stops at its second evaluation instead of running to max_steps.
    train = TrainConfig(lr=1e-12, batch_size=8, eval_steps=2, max_steps=40, patience=1)
    summary = train_step(synthetic_dataset, tmp_path, ModelConfig(checkpoint="tiny"), train)
    assert summary["global_step"] == 4
    assert summary["best_checkpoint"].endswith("checkpoint-2")
    # With min_steps the same run may not stop before step 6: a model that has not learnt yet
    # is not stuck.
    waiting = train.model_copy(update={"min_steps": 6})
    summary = train_step(synthetic_dataset, tmp_path / "waiting", ModelConfig(checkpoint="tiny"),
                         waiting)
    assert summary["global_step"] == 6


def test_freeze_vision_keeps_the_vision_tower_as_it_was(synthetic_dataset, tmp_path):
    from safetensors.torch import load_file

    model = ModelConfig(checkpoint="tiny", lora=None, freeze_vision=True)
    train = TrainConfig(lr=5e-3, batch_size=8, eval_steps=4, max_steps=4)
    train_step(synthetic_dataset, tmp_path, model, train)
    before = load_file(tmp_path / "tiny-base" / "model.safetensors")
    after = load_file(tmp_path / "model" / "model.safetensors")
    vision = [name for name in before if "vision_tower" in name]
    language = [name for name in before if "language_model" in name and "embed" not in name]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)
    assert any(not torch.equal(before[name], after[name]) for name in language)  # it did train


def test_warm_start_trains_the_champion_adapter_further_on_its_base(synthetic_dataset, tmp_path):
    from safetensors.torch import load_file

    from tasks.training.train import warm_start_config

    model = ModelConfig(checkpoint="tiny")
    first = train_step(synthetic_dataset, tmp_path / "night1", model,
                       TrainConfig(lr=1e-2, batch_size=8, eval_steps=30, max_steps=60, seed=1))
    champion = {"model_dir": first["model_dir"]}
    base = json.loads((Path(first["model_dir"]) / "adapter_config.json").read_text())[
        "base_model_name_or_path"]
    warm = warm_start_config(model, TrainConfig(warm_start=True), champion)
    assert (warm.checkpoint, warm.adapter) == (base, first["model_dir"])
    assert warm_start_config(model, TrainConfig(), champion) == model  # warm_start off
    assert warm_start_config(model, TrainConfig(warm_start=True), None) == model  # no champion

    second = train_step(synthetic_dataset, tmp_path / "night2", warm,
                        TrainConfig(lr=5e-3, batch_size=8, eval_steps=4, max_steps=4, seed=1,
                                    select="loss"))
    # It starts where the champion ended, not from the base: its first loss is the champion's
    # last, far below a fresh adapter's first (which is the base's loss).
    learnt = first["first_train_loss"] - first["last_train_loss"]
    assert learnt > 0.3, (first["first_train_loss"], first["last_train_loss"], second["first_train_loss"])
    # Nearer where the champion ended than where a fresh adapter starts (losses of a few
    # batches move by ~0.1 from batch to batch).
    assert abs(second["first_train_loss"] - first["last_train_loss"]) < 0.5 * learnt, (
        first["first_train_loss"], first["last_train_loss"], second["first_train_loss"])
    # The same base under it, and the adapter trained further (its weights moved again).
    night2 = Path(second["model_dir"])
    assert json.loads((night2 / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    before = load_file(Path(first["model_dir"]) / "adapter_model.safetensors")
    after = load_file(night2 / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[key], after[key]) for key in before)


def test_a_warm_started_run_trains_warm_start_steps_and_a_first_run_max_steps():
    from tasks.training.train import warm_start_train_config

    train = TrainConfig(warm_start=True, max_steps=1500, min_steps=750, warm_start_steps=500)
    warm = warm_start_train_config(train, {"model_dir": "/champion"})
    assert (warm.max_steps, warm.min_steps) == (500, 500)
    assert warm_start_train_config(train, None) == train  # night 1: no champion yet
    assert warm_start_train_config(train.model_copy(update={"warm_start": False}),
                                   {"model_dir": "/champion"}).max_steps == 1500
    assert warm_start_train_config(TrainConfig(warm_start=True, max_steps=9),
                                   {"model_dir": "/champion"}).max_steps == 9


def test_the_base_size_is_florence_2_base_as_published():
    import torch
    from transformers import Florence2ForConditionalGeneration

    from tasks.training.tiny import FLORENCE2_BASE, build_tiny_tokenizer, florence_config

    config = florence_config(FLORENCE2_BASE, build_tiny_tokenizer(["scratch"], FLORENCE2_BASE))
    assert FLORENCE2_BASE.image_seq_length == 577  # 24 x 24 cells + 1, as the released processor
    assert (config.text_config.d_model, config.text_config.encoder_layers,
            config.text_config.vocab_size) == (768, 6, 51289)
    with torch.device("meta"):  # sizes only: no memory, no time
        model = Florence2ForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 225e6 < parameters < 240e6, parameters  # "Florence-2-base: 0.23B parameters"


def test_the_pretrained_base_is_built_once_and_loads_like_a_checkpoint(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tasks.training.pretrain import DONE, SHAPES, build_pretrained_base

    folder = build_pretrained_base(tmp_path / "base", steps=4, batch_size=2)
    record = json.loads((folder / DONE).read_text())
    assert record["steps"] == 4 and record["shapes"] == list(SHAPES)
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert build_pretrained_base(tmp_path / "base", steps=4) == folder  # reused, not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime_ns == built
    processor = AutoProcessor.from_pretrained(folder)
    AutoModelForImageTextToText.from_pretrained(folder)
    # Its byte-level tokenizer spells any class name, in any script, and reads it back.
    for label in ("scratch", "傷", "défaut"):
        ids = processor.tokenizer(label, add_special_tokens=False).input_ids
        assert processor.tokenizer.decode(ids) == label
    assert not list(tmp_path.glob(".base.*"))  # no half-built folder left behind


def test_a_process_forked_after_a_prefect_flow_ran_ends_cleanly(prefect_server):
    import multiprocessing
    import threading

    from prefect import flow

    from tasks.core.forks import forget_prefect_exit_hooks_in_forks

    @flow(name="any-flow")
    def any_flow() -> int:
        return 1

    any_flow()  # Prefect's log and event services now run in this process (`defectflow demo`'s too)
    inherited = list(threading._threading_atexits)  # their thread-exit hooks among these
    forget_prefect_exit_hooks_in_forks()  # as the base build and the Trainer do before their workers
    fork = multiprocessing.get_context("fork")  # how a DataLoader starts its workers on Linux

    def exit_code(target=None) -> int | None:
        worker = fork.Process(target=target)
        worker.start()
        worker.join(60)
        return worker.exitcode

    assert exit_code() == 0
    # With the parent's hooks back, a forked child ended in Prefect's, which failed in a fork on
    # Prefect 3.8.8 (exit code 1: "DataLoader worker exited unexpectedly", the CI failure).
    # Prefect 3.9.1 ends cleanly there too; the filter stays as a guard, and this catches a
    # Prefect that fails again.
    assert exit_code(lambda: threading._threading_atexits.extend(inherited)) == 0


def test_a_training_past_its_time_limit_stops_at_the_next_step(synthetic_dataset, tmp_path,
                                                               monkeypatch):
    # Prefect's timeout alone can be lost (its alarm's exception is swallowed when it lands in a
    # finalizer): the step checks its own limit. A clock that moves 1 s a check: the limit of 5 s
    # passes at the 6th check after the start (train begins, then 5 steps), whatever the machine.
    import itertools

    import tasks.core.deadline as deadline

    clock = itertools.count()
    monkeypatch.setattr(deadline, "monotonic", lambda: float(next(clock)))
    model = ModelConfig(checkpoint="tiny")
    train = TrainConfig(lr=5e-3, batch_size=8, eval_steps=200, max_steps=400, timeout_minutes=5 / 60)
    with pytest.raises(deadline.StepTimedOut, match=r"training timed out after 6.0 s.*train.timeout_minutes"):
        train_step(synthetic_dataset, tmp_path, model, train)
    assert not (tmp_path / "model").exists()  # stopped before the end: nothing saved as trained


def test_an_evaluation_past_its_time_limit_stops_at_the_next_batch(synthetic_dataset, tiny_florence,
                                                                   tmp_path):
    from tasks.core.deadline import StepTimedOut
    from tasks.evaluation.evaluate import evaluate_step

    with pytest.raises(StepTimedOut, match="evaluation timed out.*evaluate.timeout_minutes"):
        evaluate_step(ModelConfig(checkpoint="tiny"), synthetic_dataset, tiny_florence,
                      tmp_path / "eval", split="validation", timeout_minutes=1e-6)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_the_learning_rate_schedule_is_the_configured_one(tmp_path):
    from tasks.training.trainer import training_arguments

    assert training_arguments(tmp_path, TrainConfig(), 10, None).lr_scheduler_type == "linear"
    for schedule in ("cosine", "constant_with_warmup"):
        args = training_arguments(tmp_path, TrainConfig(lr_scheduler=schedule), 10, None)
        assert args.lr_scheduler_type == schedule
