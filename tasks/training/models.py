"""Loading models: real checkpoints through transformers' native classes, from a Hub id or a folder.

`load_detector("florence-community/Florence-2-base")` and `load_detector("/path/to/folder")` go
through `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained` (no trust_remote_code).
`load_detector("tiny")` first *builds* a tiny random Florence-2 (`tasks/training/tiny.py`) into a
folder and then loads that folder through the very same `from_pretrained` path.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.training.tiny import TINY, build_tiny_florence, built_once

# What a model folder written by `finetune_detector` says about itself, for `predict`: the
# classes it learnt, the longest answer it was taught (sizes generation), the tiles it saw and
# the confidence threshold its validation images chose.
MODEL_FACTS = "defectflow.json"


def write_model_facts(model_dir: str | Path, labels: list[str], max_new_tokens: int,
                      tiling: dict | None, threshold: dict | None = None) -> None:
    """`threshold`: the confidence with the best F1 on validation images (with its F1,
    precision and recall), the default of `predict`."""
    facts = {"labels": labels, "max_new_tokens": max_new_tokens, "tiling": tiling,
             "threshold": threshold}
    (Path(model_dir) / MODEL_FACTS).write_text(json.dumps(facts, indent=1))


def read_model_facts(model_dir: str | Path) -> dict:
    """The facts, or {} for a folder without them (a checkpoint from elsewhere)."""
    path = Path(model_dir) / MODEL_FACTS
    return json.loads(path.read_text()) if path.is_file() else {}


def answer_budget(facts: dict) -> int:
    """Tokens to generate: the longest answer the model was taught (its train and selection
    targets, recorded when it was saved; never the test split's), else the decoder's length."""
    from tasks.scoring.generation import DECODER_POSITIONS

    return facts.get("max_new_tokens") or DECODER_POSITIONS


def model_class_thresholds(facts: dict) -> dict[str, float]:
    """The classes whose validation boxes chose a threshold of their own (the others: the
    model's threshold)."""
    chosen = facts.get("threshold") or {}
    return dict(chosen.get("per_class") or {})


def model_threshold(facts: dict) -> float:
    """The confidence threshold the model's validation images chose, else DEFAULT_THRESHOLD."""
    from tasks.scoring.generation import DEFAULT_THRESHOLD

    chosen = facts.get("threshold")
    return chosen["threshold"] if chosen else DEFAULT_THRESHOLD


class ModelUnavailable(RuntimeError):
    """A checkpoint that cannot be loaded, with a message that says what to do."""


def unavailable(checkpoint: str, exc: Exception) -> ModelUnavailable:
    return ModelUnavailable(
        f"cannot load {checkpoint!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        "  - without internet, download it once on a connected machine "
        f"(`hf download {checkpoint}`) and copy the Hugging Face cache (HF_HOME) here,\n"
        "  - or pass a local folder in the checkpoint layout (config.json, weights, processor files),\n"
        "  - or use `--model tiny` for the offline tiny model (demo and tests only).")


def load_detector(checkpoint: str, tiny_folder: str | Path | None = None,
                  labels: list[str] | None = None):
    """(processor, model) for a Hub id, a local folder, or `tiny` (built into `tiny_folder`)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if checkpoint == TINY:
        if tiny_folder is None:
            raise ValueError("the tiny model needs a folder to be built in")
        built_once(tiny_folder, lambda: build_tiny_florence(tiny_folder, labels or []))
        checkpoint = str(tiny_folder)
    try:
        processor = AutoProcessor.from_pretrained(checkpoint)
        model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    except (OSError, ValueError) as exc:
        raise unavailable(checkpoint, exc) from exc
    return processor, model


def load_finetuned_detector(model_dir: str | Path):
    """(processor, model) from a folder written by `finetune_detector` (adapter or full model)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = Path(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base_name = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForImageTextToText.from_pretrained(base_name)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return processor, inference_ready(model)


def inference_ready(model):
    """The model in eval mode on the GPU when there is one (bf16 where the GPU supports it, else
    fp32: fp16 overflows in generation), on the CPU in fp32 otherwise."""
    import torch

    model = model.eval()
    if not torch.cuda.is_available():
        return model
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return model.to(device="cuda", dtype=dtype)
