"""The config sections of running every night (not of the data or the model): the schedule,
the landing trigger, alerts, the prep runner, pre-labelling and retention."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    # Unknown keys are errors: a typo such as `hflp: true` must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class ScheduleConfig(Strict):
    """When `serve` runs a night even if no images landed."""

    cron: str = Field("0 2 * * *", description="when `defectflow serve` runs the retrain")
    timezone: str = Field("UTC", description="IANA name, e.g. Europe/Berlin")

    @field_validator("cron")
    @classmethod
    def _a_cron_prefect_runs(cls, cron: str) -> str:
        # Prefect's own check of a Cron schedule: a cron `serve` cannot run fails here, with the
        # file and the key, not as a traceback when serve starts.
        from prefect._internal.schemas.validators import validate_cron_string

        return validate_cron_string(cron)

    @field_validator("timezone")
    @classmethod
    def _a_known_timezone(cls, name: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {name!r}: an IANA name such as Europe/Berlin "
                             "or UTC") from None
        return name


class TriggerConfig(Strict):
    """Labelled images landing start a night."""

    quiet_seconds: float = Field(60, gt=0, description="a batch has landed once the source "
                                 "folders have been quiet this long")
    min_new_images: int = Field(5, gt=0, description="labelled images (an image with its "
                                "annotation) new or changed since the last trigger that start a "
                                "night; fewer wait for more, or for the cron")


class NotifyConfig(Strict):
    """Alerts (Apprise): a failed night, a promotion, a model server's trouble."""

    on: list[Literal["failure", "promotion", "serving"]] = Field(
        ["failure", "promotion", "serving"], description="serving: a model server refused a "
        "version (it would not download, load or warm) or saw its images drift")
    url: str | None = Field(None, description="Apprise URL(s), comma separated (slack://..., "
                            "mailto://..., json://host/path); default: $DEFECTFLOW_NOTIFY_URL, "
                            "so a webhook's secret need not sit in the YAML")

    @property
    def target(self) -> str | None:
        return self.url or os.environ.get("DEFECTFLOW_NOTIFY_URL") or None


class PrepConfig(Strict):
    """Where prepare's image work runs."""

    runner: Literal["threads", "dask"] = Field("threads", description="threads in this process, "
                                               "or a Dask cluster through prefect-dask")
    dask_address: str | None = Field(None, description="a Dask scheduler; default: a local cluster")
    dask_workers: int = Field(2, gt=0, description="workers of the local Dask cluster")


class PrelabelConfig(Strict):
    """After each night the champion pre-labels new images for LabelImg."""

    inbox: Path = Field(description="folder of new, unlabelled images (not the annotations "
                        "folder): the champion writes a LabelImg XML beside each image without one")
    threshold: float | None = Field(None, ge=0, le=1, description="boxes at or above this "
                                    "confidence; default: the one the champion's validation "
                                    "chose (best F1), else 0.25")
    adopt: Literal["none", "verified"] = Field(
        "none", description="verified: the inbox's XMLs a person marked verified in LabelImg "
        "(its Verify Image key) are labels of the line, read where they are (nothing is moved); "
        "pre-labels and unverified XMLs never are")


class RetentionConfig(Strict):
    """What a line keeps on disk and in the registry."""

    runs: int = Field(3, ge=1, description="nights whose run folders (checkpoints, pixel cache, "
                      "model files) and registered model files are kept, besides the champion's "
                      "and the challenger's; older ones keep their records only")


class FeedbackConfig(Strict):
    """Production images back to labelling, in the spirit of Roboflow Inference's active learning
    strategies; each strategy's `daily_limit` holds across a line's replicas."""

    close_to_threshold: float = Field(0.1, ge=0, le=1, description="epsilon: an image with a box "
                                      "whose score is within this of its class threshold")
    close_to_threshold_daily_limit: int = Field(50, ge=0, description="images a day, the line's "
                                                "replicas together")
    no_detections_share: float = Field(0.05, ge=0, le=1, description="share of the images with no "
                                       "box kept that are sampled")
    no_detections_daily_limit: int = Field(20, ge=0, description="images a day")
    random_share: float = Field(0.01, ge=0, le=1, description="share of all images sampled")
    random_daily_limit: int = Field(20, ge=0, description="images a day")


class DriftConfig(Strict):
    """When the night's serving-monitor alerts: served images against the test set's."""

    no_box_share_ratio: float = Field(2.0, gt=1, description="alert when the share of images "
                                      "with no box is this many times the test set's")
    brightness_sigmas: float = Field(3.0, gt=0, description="alert when the mean brightness "
                                     "moves more than this many of the test set's standard "
                                     "deviations")
    min_images: int = Field(50, gt=0, description="fewer images in 24 h raise no alert")


class ServingConfig(Strict):
    """`defectflow serve-model`: the line's champion over HTTP."""

    max_bytes: int = Field(20_000_000, gt=0, description="largest request body (413 above)")
    max_batch: int = Field(8, gt=0, description="images run together across requests")
    max_wait_ms: float = Field(10, ge=0, description="how long the first image of a batch waits "
                               "for others")
    poll_seconds: float = Field(30, gt=0, description="how often the champion alias is read")
    pin: int | None = Field(None, gt=0, description="serve this version instead of following "
                            "the champion alias")
    feedback: FeedbackConfig | None = Field(FeedbackConfig(), description="sample served images "
                                            "into `prelabel.inbox` (needs prelabel); null: none")
    drift: DriftConfig = DriftConfig()
