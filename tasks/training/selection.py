"""What chooses a run's checkpoint and threshold: the validation split, else train images set
aside by content hash (with their flipped copies, then not trained on), else nothing (the last
checkpoint is kept). The test split is never loaded here: it scores the final model only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.core.logs import run_logger
from tasks.dataset.loading import load_published


@dataclass
class Splits:
    """What a run trains on and what chooses its checkpoint and threshold. `selection` is None
    when there is nothing to choose on (the last checkpoint is kept); `selected_on` says which:
    `validation`, `train_holdout` (train images set aside) or `last_checkpoint`."""

    train: object  # a datasets.Dataset
    selection: object | None
    selected_on: str


def load_splits(dataset_dir: str | Path):
    """The prepared dataset's train split and its validation split (None when it has none). The
    test split is never loaded here: it scores the final model and does nothing else."""
    loaded = load_published(dataset_dir)
    if "train" not in loaded:
        raise ValueError(f"{dataset_dir} has no train split: nothing to train on")
    validation = loaded.get("validation")
    return loaded["train"], validation if validation is not None and len(validation) else None


def holdout_sources(sources: list[str], hashes: list[str], share: float) -> set[str]:
    """The source images to set aside: the `share` (at least one) whose content hash sorts
    first, never all of them. A source's copies (flips, tiles) share its `source_id`; its key is
    the smallest content hash among them, so the choice is the same in every run and process."""
    key: dict[str, str] = {}
    for source, digest in zip(sources, hashes, strict=True):
        key[source] = min(key.get(source, digest), digest)
    if len(key) < 2:
        return set()
    count = min(len(key) - 1, max(1, round(share * len(key))))
    return set(sorted(key, key=lambda source: (key[source], source))[:count])


def selection_splits(train, validation, holdout: float) -> Splits:
    """Validation chooses when there is one; else a part of train set aside by content hash
    (with its flipped copies, which are then not trained on); else nothing does, and the log
    says the last checkpoint is kept."""
    if validation is not None:
        return Splits(train, validation, "validation")
    aside = holdout_sources(train["source_id"], train["sha256"], holdout)
    if not aside:
        run_logger().warning(
            "no validation split and too few train images to set one aside: the last checkpoint "
            "is kept, nothing chooses it (the test split only scores)")
        return Splits(train, None, "last_checkpoint")
    chosen = [i for i, source in enumerate(train["source_id"]) if source in aside]
    rest = sorted(set(range(len(train))) - set(chosen))
    run_logger().warning(
        "no validation split: %d of %d train images (%d rows with their copies) set aside by "
        "content hash to choose the checkpoint and the threshold; they are not trained on (the "
        "test split only scores)", len(aside), len(set(train["source_id"])), len(chosen))
    return Splits(train.select(rest), train.select(chosen), "train_holdout")
