"""What chooses the checkpoint and the threshold: validation, else train images set aside by
content hash (with their flipped copies), else nothing (the last checkpoint); never the test split."""

import json
import logging

import datasets
import pytest

from tasks.core.config import ModelConfig, TrainConfig
from tasks.training.selection import holdout_sources, load_splits, selection_splits
from tests.support import prepare_without_prefect


def rows(sources: dict[str, str], flips: bool = True) -> datasets.Dataset:
    """A train split: one original row per source (its content hash given), and its flipped copy."""
    table = {"source_id": [], "sha256": [], "augmentation": [], "image_id": []}
    for source, digest in sources.items():
        for augmentation in ("none", "hflip") if flips else ("none",):
            table["source_id"].append(source)
            table["sha256"].append(digest if augmentation == "none" else "f" * 8 + digest)
            table["augmentation"].append(augmentation)
            table["image_id"].append(source + ("" if augmentation == "none" else "#hflip"))
    return datasets.Dataset.from_dict(table)


def test_without_validation_the_images_first_by_content_hash_are_set_aside_with_their_flips(caplog):
    digests = {f"img{i:02d}": f"{(i * 37) % 100:02d}" + "ab" * 31 for i in range(20)}
    train = rows(digests)
    with caplog.at_level(logging.WARNING, logger="defectflow"):
        splits = selection_splits(train, None, holdout=0.1)
    expected = set(sorted(digests, key=digests.get)[:2])  # 10% of 20, the smallest hashes
    assert splits.selected_on == "train_holdout"
    assert set(splits.selection["source_id"]) == expected
    assert sorted(splits.selection["image_id"]) == sorted(
        [s for s in expected] + [f"{s}#hflip" for s in expected])
    # Set aside means not trained on, flips included; nothing else is lost.
    assert not expected & set(splits.train["source_id"])
    assert len(splits.train) + len(splits.selection) == len(train) == 40
    assert any("2 of 20 train images" in r.getMessage() and "set aside" in r.getMessage()
               for r in caplog.records)
    # The same in any order of rows (the choice is by content, not by position).
    again = selection_splits(train.shuffle(seed=3), None, holdout=0.1)
    assert set(again.selection["source_id"]) == expected


def test_at_least_one_image_is_set_aside_but_never_all_and_one_image_keeps_the_last_checkpoint(caplog):
    assert len(holdout_sources(["a", "b", "c"], ["1", "2", "3"], share=0.01)) == 1
    assert holdout_sources(["a", "b"], ["1", "2"], share=0.9) == {"a"}
    with caplog.at_level(logging.WARNING, logger="defectflow"):
        single = selection_splits(rows({"only": "00"}), None, holdout=0.1)
    assert single.selected_on == "last_checkpoint" and single.selection is None
    assert len(single.train) == 2
    assert any("last checkpoint is kept" in r.getMessage() for r in caplog.records)


def test_a_validation_split_is_what_chooses_when_there_is_one():
    validation = rows({"v": "00"}, flips=False)
    splits = selection_splits(rows({"a": "01", "b": "02"}), validation, holdout=0.1)
    assert splits.selected_on == "validation" and splits.selection is validation
    assert len(splits.train) == 4


def test_the_test_split_is_never_loaded_for_training(tmp_path):
    from tasks.demo.sample_data import generate

    generate(tmp_path / "source", count=12, size=48, seed=4, troubles=False)
    dataset = prepare_without_prefect(tmp_path / "source", tmp_path / "dataset", tmp_path / "home",
                                      split={"train": 0.7, "validation": 0.0, "test": 0.3})
    train, validation = load_splits(dataset)
    assert validation is None  # before: the test split stood in for validation
    test_ids = set(datasets.load_dataset(str(dataset), split="test")["image_id"])
    assert test_ids and not test_ids & set(train["image_id"])


@pytest.mark.slow
@pytest.mark.trains
def test_training_without_validation_chooses_on_set_aside_train_images(tmp_path, caplog):
    from tasks.demo.sample_data import generate
    from tasks.training.train import train_step

    generate(tmp_path / "source", count=24, size=64, seed=5, troubles=False)
    dataset = prepare_without_prefect(tmp_path / "source", tmp_path / "dataset", tmp_path / "home",
                                      split={"train": 0.9, "validation": 0.0, "test": 0.1})
    train_config = TrainConfig(lr=5e-3, batch_size=8, eval_steps=4, max_steps=8, seed=1)
    with caplog.at_level(logging.WARNING, logger="defectflow"):
        summary = train_step(dataset, tmp_path / "run", ModelConfig(checkpoint="tiny"), train_config)
    written = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert written["selected_on"] == summary["selected_on"] == "train_holdout"
    full_train = datasets.load_dataset(str(dataset), split="train")
    aside = holdout_sources(full_train["source_id"], full_train["sha256"], train_config.holdout)
    aside_rows = sum(source in aside for source in full_train["source_id"])
    assert aside and summary["selection_rows"] == aside_rows
    assert summary["train_rows"] == len(full_train) - aside_rows
    # The checkpoint was chosen by mAP50 on those images, at every evaluation.
    assert summary["metric_for_best_model"] == "map50"
    assert [step for step, _ in summary["curves"]["val_map50"]] == [4, 8]
    facts = json.loads((tmp_path / "run" / "model" / "defectflow.json").read_text())
    assert facts["threshold"] is None or facts["threshold"]["chosen_on"] == "train_holdout"
    assert any("set aside" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@pytest.mark.trains
def test_with_nothing_to_set_aside_the_last_checkpoint_is_kept(tmp_path):
    from tasks.demo.sample_data import generate
    from tasks.training.train import train_step

    generate(tmp_path / "source", count=2, size=64, seed=6, troubles=False)
    dataset = prepare_without_prefect(tmp_path / "source", tmp_path / "dataset", tmp_path / "home",
                                      split={"train": 0.5, "validation": 0.0, "test": 0.5})
    summary = train_step(dataset, tmp_path / "run", ModelConfig(checkpoint="tiny"),
                         TrainConfig(lr=5e-3, batch_size=2, eval_steps=2, max_steps=4, seed=1))
    assert summary["selected_on"] == "last_checkpoint" and summary["selection_rows"] == 0
    assert summary["global_step"] == 4 and summary["best_checkpoint"] is None
    assert "val_map50" not in summary["curves"]
    facts = json.loads((tmp_path / "run" / "model" / "defectflow.json").read_text())
    assert facts["threshold"] is None
    assert (tmp_path / "run" / "model" / "adapter_config.json").exists()


def test_the_threshold_is_chosen_on_the_selection_set_and_says_which(synthetic_dataset, tiny_florence,
                                                                     monkeypatch):
    from transformers import AutoProcessor

    from tasks.scoring.score import original_rows
    from tasks.training.detector import selection_threshold
    from tests.scoring.test_tiled_scoring import ScriptedByCall

    processor = AutoProcessor.from_pretrained(tiny_florence)
    selection = original_rows(datasets.load_dataset(str(synthetic_dataset), split="validation"))
    perfect = [processor.tokenizer(target + "</s>", add_special_tokens=False).input_ids
               for target in selection["target"]]  # each image's own labels, said back
    model = ScriptedByCall(perfect, processor.tokenizer.eos_token_id, len(processor.tokenizer))
    model.eval = lambda: model  # what selection_threshold calls on a real model
    chosen = selection_threshold(model, processor, selection, "train_holdout",
                                 ["patch", "scratch", "spot"], TrainConfig(batch_size=4))
    assert (chosen["chosen_on"], chosen["images"]) == ("train_holdout", len(selection))
    assert chosen["precision"] == chosen["recall"] == chosen["f1"] == 1.0
    assert 0 < chosen["threshold"] < 1
    # Each class with enough boxes among these images has its own threshold, saved beside the
    # global one in defectflow.json (predict, pre-labels and the review set read it).
    # (These 4 images hold 1-3 boxes of a class: none has the 5 it takes; with 1 each has.)
    assert chosen["per_class"] == {}
    monkeypatch.setattr("tasks.scoring.threshold.MIN_CLASS_BOXES", 1)
    model = ScriptedByCall(perfect, processor.tokenizer.eos_token_id, len(processor.tokenizer))
    model.eval = lambda: model
    each = selection_threshold(model, processor, selection, "train_holdout",
                               ["patch", "scratch", "spot"], TrainConfig(batch_size=4))
    assert set(each["per_class"]) == {label for labels in selection["labels"] for label in labels}
    assert all(0 < value < 1 for value in each["per_class"].values())
    assert selection_threshold(model, processor, None, "last_checkpoint", ["spot"],
                               TrainConfig()) is None
