"""Tiny offline look-alikes of the real models, for the demo and the tests (random weights).

`build_tiny_florence` makes the Florence-2 architecture at toy size (small DaViT + small BART, a
byte-level BPE tokenizer trained on the spot with Florence's special, task and
`<loc_0>`..`<loc_999>` tokens) and saves it as a checkpoint folder; `build_tiny_vit` does the same
for a ViT classifier. Their model cards say what they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TINY = "tiny"

TASK_TOKENS = ("<OCR>", "<OCR_WITH_REGION>", "<CAPTION>", "<DETAILED_CAPTION>",
               "<MORE_DETAILED_CAPTION>", "<OD>", "<DENSE_REGION_CAPTION>",
               "<CAPTION_TO_PHRASE_GROUNDING>", "<REFERRING_EXPRESSION_SEGMENTATION>",
               "<REGION_TO_SEGMENTATION>", "<OPEN_VOCABULARY_DETECTION>", "<REGION_TO_CATEGORY>",
               "<REGION_TO_DESCRIPTION>", "<REGION_TO_OCR>", "<REGION_PROPOSAL>")
STRUCTURE_TOKENS = ("<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>", "<sep>", "<cap>",
                    "</cap>", "<ground>", "</ground>", "<obj>", "</obj>")
LOC_TOKENS = tuple(f"<loc_{i}>" for i in range(1000))
# The parsing rules transformers' Florence2PostProcessor reads (as in the released checkpoints).
POST_PROCESSOR_CONFIG = {
    "ocr": {"pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"
                       r"<loc_(\d+)><loc_(\d+)>", "area_threshold": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": ["the image"]},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {},
    "polygons": {}, "bboxes": {}, "description_with_bboxes_or_polygons": {},
}
TINY_CARD = """---
tags: [defectflow, florence-2, tiny, random-weights]
---
# Tiny random Florence-2 (defectflow)

Built offline by `defectflow` for its demo and tests: the Florence-2 architecture
(`Florence2ForConditionalGeneration`: DaViT vision tower + BART encoder-decoder) at toy size,
**random weights** (only the `<loc_N>` embeddings and the image position embeddings start from
one shared sinusoidal code of "where", so that a model this small can learn to localise), and a
byte-level BPE tokenizer trained on a few sentences, with Florence's task tokens and
`<loc_0>`..`<loc_999>`. It learns a small synthetic task; it knows nothing else.
Use a real checkpoint (e.g. `florence-community/Florence-2-base`) for real work.

{details}
"""


TINY_VIT_CARD = """---
tags: [defectflow, vit, tiny, random-weights]
---
# Tiny random ViT (defectflow)

Built offline by `defectflow` for its demo and tests: `ViTForImageClassification` at toy size
with **random weights**. Use a real checkpoint (e.g. `google/vit-base-patch16-224`) for real work.
"""


@dataclass(frozen=True)
class FlorenceSize:
    """The architecture's sizes; the defaults are the toy model, `FLORENCE2_BASE` the real one."""

    image_size: int = 64
    embed_dim: tuple[int, ...] = (32, 64)  # DaViT, one entry per stage
    depths: tuple[int, ...] = (1, 1)
    vision_heads: tuple[int, ...] = (2, 4)
    patch_size: tuple[int, ...] = (7, 3)
    strides: tuple[int, ...] = (4, 2)  # DaViT patch strides of the stages
    window_size: int = 4
    d_model: int = 64  # BART
    layers: int = 2
    heads: int = 4
    ffn_dim: int = 128
    vocab_size: int = 400  # BPE merges on top of the 256 bytes; added tokens come after
    model_vocab: int = 0  # embedding rows, if more than the tokenizer has (the real vocabulary's)

    @property
    def grid(self) -> int:
        return self.image_size // math.prod(self.strides)

    @property
    def image_seq_length(self) -> int:
        return 1 + self.grid * self.grid  # a pooled token + one per grid cell (the projector's)


# Florence-2-base as published (microsoft/Florence-2-base config.json): DaViT with 4 stages at
# 768 px (577 image tokens), BART-base (6 + 6 layers, d_model 768, 12 heads, FFN 3072), 51289
# token embeddings. About 230 M parameters.
FLORENCE2_BASE = FlorenceSize(image_size=768, embed_dim=(128, 256, 512, 1024), depths=(1, 1, 9, 1),
                              vision_heads=(4, 8, 16, 32), patch_size=(7, 3, 3, 3),
                              strides=(4, 2, 2, 2), window_size=12, d_model=768, layers=6,
                              heads=12, ffn_dim=3072, model_vocab=51289)


def _tokenizer_corpus(labels: list[str]) -> list[str]:
    sentences = [
        "What is the text in the image?", "What is the text in the image, with regions?",
        "What does the image describe?", "Describe in detail what is shown in the image.",
        "Describe with a paragraph what is shown in the image.",
        "Locate the objects with category name in the image.",
        "Locate the objects in the image, with their descriptions.",
        "Locate the region proposals in the image.", "Locate the phrases in the caption:",
        "What is the polygon mask of region", "What is the region", "What text is in the region",
        "a defect on a steel surface, a scratch, a spot, a patch, a crack, an inclusion",
    ]
    return sentences * 20 + [" ".join(labels)] * 50 + labels * 50


def build_tiny_tokenizer(labels: list[str], size: FlorenceSize):
    """A BartTokenizer (fast) trained here, with Florence's added tokens."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import BartTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # BART's ids 0..4
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(_tokenizer_corpus(labels), vocab_size=256 + len(specials) + size.vocab_size,
                            min_frequency=1, special_tokens=specials, show_progress=False)
    bpe.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    # Task, structure and location tokens are ordinary added tokens: decoding with
    # skip_special_tokens=True keeps them, as Florence's post-processor needs.
    bpe.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in TASK_TOKENS + STRUCTURE_TOKENS + LOC_TOKENS])
    bpe.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                            special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = BartTokenizer(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                              pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                              cls_token="<s>", sep_token="</s>",
                              extra_special_tokens={"image_token": "<image>"},
                              model_max_length=1024)
    return tokenizer


def florence_config(size: FlorenceSize, tokenizer):
    """transformers' `Florence2Config` at `size`, for this tokenizer."""
    from transformers import Florence2Config

    text_config = {
        "model_type": "bart", "vocab_size": max(len(tokenizer), size.model_vocab),
        "d_model": size.d_model,
        "encoder_layers": size.layers, "decoder_layers": size.layers,
        "encoder_attention_heads": size.heads, "decoder_attention_heads": size.heads,
        "encoder_ffn_dim": size.ffn_dim, "decoder_ffn_dim": size.ffn_dim,
        "max_position_embeddings": 1024, "dropout": 0.1, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
        "decoder_start_token_id": 2, "forced_eos_token_id": 2, "scale_embedding": False,
    }
    vision_config = {
        "depths": list(size.depths), "patch_size": list(size.patch_size),
        "patch_stride": list(size.strides), "patch_padding": [p // 2 for p in size.patch_size],
        "patch_prenorm": [stage > 0 for stage in range(len(size.depths))],
        "embed_dim": list(size.embed_dim), "num_heads": list(size.vision_heads),
        "num_groups": list(size.vision_heads), "window_size": size.window_size,
        "drop_path_rate": 0.0,
        "projection_dim": size.d_model, "max_position_embeddings": 50,
    }
    return Florence2Config(text_config=text_config, vision_config=vision_config,
                           image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def build_tiny_florence(folder: str | Path, labels: list[str],
                        size: FlorenceSize = FlorenceSize(), seed: int = 0) -> Path:
    """Create a tiny random Florence-2 checkpoint folder (config, weights, processor, card)."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    folder = Path(folder)
    tokenizer = build_tiny_tokenizer(labels, size)
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"height": size.image_size, "width": size.image_size},
        do_center_crop=False, do_rescale=True, do_normalize=True, do_convert_rgb=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3,
    )
    image_processor.image_seq_length = size.image_seq_length
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   num_additional_image_tokens=0,
                                   post_processor_config=POST_PROCESSOR_CONFIG)
    config = florence_config(size, tokenizer)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    localisation_prior(model, tokenizer, size.grid)
    model.generation_config.decoder_start_token_id = 2
    model.generation_config.bos_token_id = 0
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 1
    model.generation_config.max_new_tokens = 64
    model.generation_config.num_beams = 1
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    details = json.dumps({"labels": labels, "image_size": size.image_size,
                          "parameters": sum(p.numel() for p in model.parameters())}, indent=1)
    (folder / "README.md").write_text(TINY_CARD.format(details=f"```json\n{details}\n```"))
    return folder


def _position_code(positions: list[float], width: int) -> torch.Tensor:
    """Sinusoids of a position on the 0..1000 location scale (neighbours look alike)."""
    import torch

    frequencies = torch.exp(torch.arange(0, width, 2, dtype=torch.float32)
                            * (-math.log(1000.0) / width)) * (2 * math.pi * 8 / 1000)
    angles = torch.tensor(positions, dtype=torch.float32)[:, None] * frequencies
    code = torch.zeros(len(positions), width)
    code[:, 0::2] = torch.sin(angles)
    code[:, 1::2] = torch.cos(angles[:, : width // 2])
    return code


def localisation_prior(model, tokenizer, grid: int, loc_scale: float = 0.05) -> None:
    """Start the tiny model with one shared code for "where": `<loc_N>` embeddings and the
    projector's 2-D image position embeddings (columns in the first half of the channels, rows in
    the second, as transformers lays them out) use the same sinusoids of the position on the
    0..1000 scale, and the projection starts as the identity. A pretrained Florence-2 has learnt
    such an alignment; a tiny model trained from scratch on a few hundred images, with 1000 bins
    and an output layer tied to these embeddings, learns to localise far faster with it (as DETR
    uses fixed sine codes). Every other weight stays random; the model card says so."""
    import torch

    embeddings = model.get_input_embeddings().weight
    width = embeddings.shape[1]
    half = width // 2
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(LOC_TOKENS)))
    loc_code = _position_code([q + 0.5 for q in range(len(LOC_TOKENS))], half)
    projector = model.model.multi_modal_projector
    # The position embeddings live on the vision features (half their width each axis): the
    # text width's half in the toy model, 512 of DaViT's 1024 at base size.
    cells = _position_code([(g + 0.5) * 1000 / grid for g in range(grid)],
                           projector.image_position_embed.column_embeddings.weight.shape[1])
    with torch.no_grad():
        embeddings[ids] = torch.cat([loc_code, loc_code], dim=1) * loc_scale
        projector.image_position_embed.column_embeddings.weight[:grid] = cells
        projector.image_position_embed.row_embeddings.weight[:grid] = cells
        if projector.image_projection.weight.shape[0] == projector.image_projection.weight.shape[1]:
            projector.image_projection.weight.copy_(torch.eye(width))


def build_tiny_vit(folder: str | Path, labels: list[str], image_size: int = 64, seed: int = 0) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=len(labels),
                       id2label=dict(enumerate(labels)),
                       label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": image_size, "width": image_size},
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text(TINY_VIT_CARD)
    return folder


def built_once(folder: str | Path, build: Callable[[], Path]) -> Path:
    """`build()` makes `folder` unless a finished one is there (its card is written last). Under
    a file lock: the ranks of a distributed training all reach this line at once."""
    from filelock import FileLock

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if not (folder / "README.md").is_file():
            build()
    return folder
