"""The one config model: `datasets_cfg/<name>.yaml`, validated with errors that name file and key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tasks.core.data_config import (  # noqa: F401 - re-exported: callers name them here
    AugmentConfig,
    ImageLimits,
    PublishConfig,
    SourceConfig,
    SplitConfig,
    TargetsConfig,
    TilingConfig,
)
from tasks.core.labels import LabelRules, label_problem, tidy
from tasks.core.model_config import EvaluateConfig, ModelConfig, TrainConfig
from tasks.core.operations_config import (
    NotifyConfig,
    PrelabelConfig,
    PrepConfig,
    RetentionConfig,
    ScheduleConfig,
    ServingConfig,
    Strict,
    TriggerConfig,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the problem."""


_Strict = Strict  # every section refuses unknown keys


DETECTOR_METRICS = ("map", "map50", "map75")
CLASSIFIER_METRICS = ("macro_f1", "accuracy")


class PromoteConfig(_Strict):
    """The gate a challenger passes to become champion."""

    metric: Literal["map", "map50", "map75", "accuracy", "macro_f1"] | None = Field(
        None, description="default per model kind: map (florence2), macro_f1 (vit)")
    min_gain: float = Field(0.0, ge=0, description="the challenger must beat the champion by more")
    min_metric: float = Field(0.0, ge=0, le=1, description="a floor: no model below it becomes "
                              "champion, the first one included")
    max_class_drop: float | None = Field(
        None, ge=0, le=1, description="no class's AP50 (detector) or F1 (classifier) may fall by "
        "more than this against the champion on the same test images")


class RegistryConfig(_Strict):
    """The MLflow registry: every trained model a version, the champion an alias."""

    tracking_uri: str | None = Field(None, description="default: sqlite file in the work dir")
    model_name: str | None = Field(None, description="default: <name>-<model kind>")
    promote: PromoteConfig = PromoteConfig()
    hub_repo: str | None = Field(None, description="push each new champion to this Hub model repo")
    hub_private: bool = Field(True, description="hub_repo is private")


class DatasetConfig(_Strict):
    """A line: its data, its model, and how its nights run (`datasets_cfg/<name>.yaml`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the line's name: "
                      "its work dir, registry model and deployment go by it")
    source: SourceConfig = Field(description="where the images and annotations are")
    grayscale: Literal["drop", "convert", "keep"] = Field(
        "drop", description="grayscale images: drop them (Florence-2 training needs RGB), "
        "convert them to 3-channel RGB, or keep them as they are")
    augment: AugmentConfig = AugmentConfig()
    split: SplitConfig = SplitConfig()
    publish: PublishConfig = PublishConfig()
    images: ImageLimits = ImageLimits()
    labels: list[str] | None = Field(
        None, description="allowed class names; boxes with other names are dropped (unknown_label)"
    )
    label_map: dict[str, str] = Field(
        {}, description="annotation name -> class name, e.g. {Scratch: scratch, 'scr.': scratch}")
    merge_case_variants: bool = Field(
        False, description="names that differ only by case or spacing become one class (the "
        "spelling in `labels`, else lower case); either way prepare_report.json lists them")
    shard_size: int = Field(256, gt=0, description="images per prep task (doubled as a line "
                            "grows, so that a night has at most ~128 image tasks)")
    targets: TargetsConfig = TargetsConfig()
    tiling: TilingConfig | None = Field(None, description="cut dense images into overlapping "
                                        "tiles (train, validation); test images are scored "
                                        "through tiles, whole")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    prep: PrepConfig = PrepConfig()
    notify: NotifyConfig = NotifyConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    trigger: TriggerConfig | None = Field(TriggerConfig(), description="while `serve` (or `watch`) "
                                          "runs, labelled images landing start a night (a Prefect "
                                          "event and the deployment's trigger); null: the cron only")
    prelabel: PrelabelConfig | None = Field(None, description="after each night, the champion "
                                            "pre-labels new images for LabelImg")
    retention: RetentionConfig = RetentionConfig()
    serving: ServingConfig = ServingConfig()

    @property
    def model_name(self) -> str:
        return self.registry.model_name or f"{self.name}-{self.model.kind}"

    @property
    def promotion_metric(self) -> str:
        """The number the champion is chosen by: the config's, or the model kind's default."""
        default = DETECTOR_METRICS[0] if self.model.kind == "florence2" else CLASSIFIER_METRICS[0]
        return self.registry.promote.metric or default

    @model_validator(mode="after")
    def _metric_fits_the_model(self) -> DatasetConfig:
        allowed = DETECTOR_METRICS if self.model.kind == "florence2" else CLASSIFIER_METRICS
        if self.promotion_metric not in allowed:
            raise ValueError(f"registry.promote.metric {self.promotion_metric!r} does not exist for a "
                             f"{self.model.kind} model; use one of {', '.join(allowed)}")
        if self.prelabel is not None and self.model.kind != "florence2":
            raise ValueError(f"prelabel writes boxes, which a {self.model.kind} classifier does not "
                             "give: remove `prelabel` or use model.kind florence2")
        selectable = ("map50", "map", "loss") if self.model.kind == "florence2" else ("accuracy", "loss")
        if self.train.select is not None and self.train.select not in selectable:
            raise ValueError(f"train.select {self.train.select!r} does not exist for a "
                             f"{self.model.kind} model; use one of {', '.join(selectable)}")
        return self

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("labels must be unique")
        for name in value or ():
            if (problem := label_problem(tidy(name))) is not None:
                raise ValueError(problem)
        return value

    @field_validator("label_map")
    @classmethod
    def _class_names_are_clean(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            if (problem := label_problem(tidy(name))) is not None:
                raise ValueError(problem)
        return value

    @property
    def label_rules(self) -> LabelRules:
        return LabelRules(label_map=self.label_map, merge_case_variants=self.merge_case_variants,
                          allowed=None if self.labels is None
                          else [tidy(label) for label in self.labels])

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some sections, for cache keys (paths are part of it)."""
        data = self.model_dump(mode="json", include=set(sections) if sections else None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid config"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def overlaps(a: Path, b: Path) -> bool:
    """The same folder, or one inside the other."""
    return a == b or b in a.parents or a in b.parents


def load_config(path: str | Path) -> DatasetConfig:
    """Read and validate a dataset YAML; relative paths resolve against the YAML's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    try:
        config = DatasetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None
    base = path.resolve().parent
    source = config.source
    source.images = (base / source.images).resolve()
    source.annotations = ([(base / p).resolve() for p in source.annotations]
                          if isinstance(source.annotations, list)
                          else (base / source.annotations).resolve())
    if "verified_inbox" in (raw.get("source") or {}):
        raise ConfigError(f"{path}: source.verified_inbox: set `prelabel: {{inbox: ..., adopt: "
                          "verified}` instead")
    if config.prelabel is not None:
        config.prelabel.inbox = inbox = (base / config.prelabel.inbox).resolve()
        if config.prelabel.adopt == "verified":
            source.verified_inbox = inbox
            if overlaps(inbox, source.images):
                # An image would be read by both sources: once adopted, once unlabelled.
                raise ConfigError(f"{path}: prelabel.inbox {inbox} overlaps source.images "
                                  f"{source.images}: with adopt: verified keep the two folders apart")
        for annotations in source.annotation_paths:
            if overlaps(inbox, annotations):
                # Tomorrow's ingest would read the model's guesses as a person's labels.
                raise ConfigError(f"{path}: prelabel.inbox {inbox} overlaps source.annotations "
                                  f"{annotations}: pre-labels are guesses, keep them apart "
                                  "until a person has corrected them in LabelImg")
    return config
