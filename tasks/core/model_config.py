"""The config sections of the model: what is trained (Florence-2 or ViT, LoRA), how, and how it
is evaluated. Part of the one config model (`config.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.core.operations_config import Strict


class LoraConfig(Strict):
    """LoRA adapters (peft) on the model's projections; the base weights stay frozen."""

    r: int = Field(8, gt=0, description="the adapters' rank")
    alpha: int = Field(8, gt=0, description="LoRA's scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    # Every attention projection and MLP of Florence-2, by transformers' module names: BART's
    # q_proj/k_proj/v_proj/out_proj and fc1/fc2, DaViT's fused qkv, its output proj, fc1/fc2.
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "out_proj", "qkv", "proj", "fc1", "fc2"],
        description="module names that get adapters")


class ModelConfig(Strict):
    """What is trained: Florence-2 detecting boxes, or a ViT classifying whole images."""

    kind: Literal["florence2", "vit"] = Field("florence2", description="florence2: a detector "
                                               "(boxes); vit: an image classifier")
    checkpoint: str = Field("florence-community/Florence-2-base",
                            description="Hub id, local folder, or `tiny` (offline, random weights)")
    lora: LoraConfig | None = Field(LoraConfig(), description="null = full fine-tuning")
    freeze_vision: bool = Field(False, description="keep the vision encoder's weights as they are")
    adapter: str | None = Field(None, description="start from this LoRA adapter folder and keep "
                                "training it (the nightly warm start from a champion adapter)")
    merge: bool = Field(False, description="also save the LoRA-merged model (merge_and_unload)")
    # ViT: what an image's label is. `majority`: its most frequent box class, `passed` if none.
    image_label: Literal["majority", "first"] = Field(
        "majority", description="vit: an image's label is its most frequent box class, or its "
        "first box's")
    negative_label: str = Field("passed", description="vit: the label of an image with no box")


class DistributedConfig(Strict):
    """Training under PyTorch's launcher (`torchrun`): DDP over `nproc_per_node` processes on each
    of `nnodes` machines (NCCL on GPUs, gloo on CPUs). Every node needs the home at the same path
    (the dataset is read and rank 0 writes the run folder there)."""

    nproc_per_node: int = Field(1, gt=0, description="processes on this machine (one per GPU)")
    nnodes: int = Field(1, gt=0, description="machines; the others run `defectflow train-node`")
    rdzv_endpoint: str | None = Field(None, description="host:port where the nodes meet (c10d "
                                      "rendezvous); needed when nnodes > 1")
    rdzv_id: str = Field("defectflow", description="the training's name at the endpoint")
    join_timeout_minutes: float = Field(10, gt=0, description="how long the nodes wait for each "
                                        "other before the step fails")
    timeout_minutes: float = Field(10, gt=0, description="a collective that waits longer (a rank "
                                   "hung or gone) fails the step instead of hanging it")

    @model_validator(mode="after")
    def _endpoint_for_several_nodes(self):
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0, reachable "
                             "from every node)")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class TrainConfig(Strict):
    """How the model is trained (the transformers Trainer's arguments, and what stops it)."""

    epochs: float = Field(10, gt=0, description="passes over the training images")
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    lr: float = Field(5e-6, gt=0, description="peak learning rate")  # Florence-2 LoRA: 1e-5..5e-6
    batch_size: int = Field(4, gt=0, description="images per step and process")
    grad_accum: int = Field(1, gt=0, description="steps whose gradients add up before an update")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps the learning "
                                "rate rises over")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="how the learning rate falls after warmup (to 0: linear, cosine)")
    seed: int = Field(42, description="the training's random seed")
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    select: Literal["map50", "map", "loss", "accuracy"] | None = Field(
        None, description="what chooses the best checkpoint and stops early; default map50 "
        "(florence2: generated on the validation split, scored like `evaluate`), accuracy (vit)")
    select_images: int = Field(64, gt=0, description="validation images scored per evaluation")
    holdout: float = Field(0.1, gt=0, lt=1, description="with no validation split: the share of "
                           "train images (chosen by content hash, with their flipped copies) set "
                           "aside to choose the checkpoint and the threshold; the test split only "
                           "scores")
    min_steps: int = Field(0, ge=0, description="no early stop before this many steps")
    eval_steps: int = Field(50, gt=0, description="evaluate and checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept on disk (the best stays)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that has it, else fp32")
    warm_start: bool = Field(False, description="nightly: start from the champion (its full model, "
                             "or its LoRA adapter trained further)")
    warm_start_steps: int | None = Field(None, gt=0, description="max_steps of a warm-started "
                                         "run (it starts from a model that works already); "
                                         "default: max_steps")
    timeout_minutes: float = Field(720, gt=0, description="a longer training fails as TimedOut")
    dataloader_workers: int | None = Field(None, ge=0, description="processes preparing batches; "
                                           "default: all cores but one with a GPU, 0 without")
    distributed: DistributedConfig | None = Field(None, description="train under torchrun on "
                                                  "several processes or machines; null: one process")

    @property
    def world_size(self) -> int:
        """Processes training together: the global batch is world_size x batch_size x grad_accum."""
        return self.distributed.world_size if self.distributed else 1


class EvaluateConfig(Strict):
    """How the test split is scored."""

    num_beams: int = Field(1, ge=1, description="beams for `<OD>` generation")
    batch_size: int = Field(8, gt=0, description="images per generation")
    timeout_minutes: float = Field(120, gt=0, description="a longer evaluation fails as TimedOut")
