"""The config sections of the data: where it is, what prepare does to it (flips, splits, image
limits, targets, tiles) and where the prepared dataset goes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tasks.core.operations_config import Strict as _Strict


class SourceConfig(_Strict):
    """Where the labelled images are (relative paths: from the config file's folder)."""

    format: Literal["voc", "coco", "yolo"] = Field(description="Pascal VOC XML (LabelImg), a "
                                                   "COCO JSON, or YOLO .txt with classes.txt")
    images: Path = Field(description="folder with the images (searched recursively)")
    annotations: Path | list[Path] = Field(
        description="VOC: a folder of XML files, or a list of folders (one per annotation pass: "
        "boxes for the same image merge); COCO: the JSON file; YOLO: the folder of LabelImg "
        ".txt files with its classes.txt")
    verified_inbox: Path | None = Field(
        None, description="set from `prelabel: {adopt: verified}` (not written here): the inbox "
        "whose XMLs a person marked verified in LabelImg are labels too")

    @model_validator(mode="after")
    def _one_file_for_coco(self) -> SourceConfig:
        if isinstance(self.annotations, list):
            if self.format != "voc":
                raise ValueError(f"a list of annotation folders is for VOC, not {self.format}")
            if not self.annotations:
                raise ValueError("annotations: the list of folders is empty")
        return self

    @property
    def annotation_paths(self) -> list[Path]:
        return list(self.annotations) if isinstance(self.annotations, list) else [self.annotations]


class AugmentConfig(_Strict):
    """Flipped copies of the training images (their boxes flipped with them)."""

    hflip: bool = Field(True, description="add a left-right mirrored copy")
    vflip: bool = Field(False, description="add an upside-down copy")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The flips on, in the order their copies follow an original."""
        return tuple(kind for kind, on in (("hflip", self.hflip), ("vflip", self.vflip)) if on)


class SplitConfig(_Strict):
    """Shares of the images per split, by content hash: an image stays in its split forever."""

    train: float = Field(0.8, ge=0, le=1, description="share trained on")
    validation: float = Field(0.1, ge=0, le=1, description="share that chooses the checkpoint "
                              "and the threshold")
    test: float = Field(0.1, ge=0, le=1, description="share that only scores (the gate's)")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class PublishConfig(_Strict):
    """Where the prepared dataset goes."""

    target: Literal["local", "hub"] = Field("local", description="local: parquet in the output "
                                            "folder; hub: also pushed to the Hugging Face Hub")
    repo_id: str | None = Field(None, description="hub: the dataset repo, e.g. my-org/defects")
    private: bool = Field(True, description="hub: a private dataset repo")

    @model_validator(mode="after")
    def _hub_needs_repo(self) -> PublishConfig:
        if self.target == "hub" and not self.repo_id:
            raise ValueError("target 'hub' needs repo_id (e.g. my-org/defects)")
        return self


class ImageLimits(_Strict):
    """What an image may be before it is quarantined."""

    # Pillow's own bomb guard is ~179 MP; factory images are big but never this big.
    max_pixels: int = Field(100_000_000, gt=0, description="larger images (decompression bombs "
                            "included) are image_too_large")
    # JPEG rounding can leave R, G, B a unit or two apart in a gray picture.
    gray_tolerance: int = Field(2, ge=0, le=255, description="R, G and B this close count as "
                                "gray")
    min_box_size: float = Field(1.0, ge=0, description="boxes narrower or lower (px) are dropped")


class TargetsConfig(_Strict):
    """The `<loc_*>` target strings Florence-2 learns."""

    # Florence-2's BART decoder has 1024 positions: a longer target cannot be learnt whole.
    max_tokens: int = Field(1024, gt=8, description="longest target (model tokens, with <s> and "
                            "</s>); an image whose target is longer is quarantined (target_too_long)")


class TilingConfig(_Strict):
    """Dense images cut into overlapping tiles."""

    size: int = Field(gt=16, description="tile side (px of the image as stored)")
    overlap: float = Field(0.2, ge=0, lt=0.9, description="share of a side neighbours overlap")
    all_images: bool = Field(False, description="tile every image larger than a tile, not only "
                             "those whose target is over the budget")
    min_visible: float = Field(0.5, gt=0, le=1, description="a box cut by a tile's edge belongs "
                               "to the tile when this share of its area is inside")
