"""The training input pipeline: pixels decoded and resized once (cached by content), normalised
on the device, and the model sees the processor's own values to the last bit."""

import io

import pytest
import torch
from PIL import Image

from tasks.training.detector import DetectionCollator
from tasks.training.pixels import PixelCache, normalise_on_device


def cell(image: Image.Image, fmt: str = "JPEG") -> dict:
    """A dataset image cell read with decode=False."""
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.fixture
def processor(tiny_florence):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_florence)


@pytest.mark.parametrize("side", [64, 768])  # the tiny model's input and Florence-2-base's
def test_cached_pixels_normalised_on_the_device_are_the_processors_own(tmp_path, processor, side):
    processor.image_processor.size = {"height": side, "width": side}
    cells = [cell(Image.effect_noise((200, 150), 50).convert("RGB")),
             cell(Image.effect_noise((90, 300), 80).convert("L").convert("RGB"), "PNG")]
    decoded = [Image.open(io.BytesIO(c["bytes"])).convert("RGB") for c in cells]
    expected = processor(text=["<OD>"] * 2, images=decoded, return_tensors="pt")["pixel_values"]
    cache = PixelCache(tmp_path, processor.image_processor)
    first = cache.batch(cells)
    assert first.dtype == torch.uint8 and len(list(tmp_path.rglob("*.npy"))) == 2
    again = cache.batch(cells)  # read back from disk
    for batch in (first, again):
        assert torch.equal(normalise_on_device(batch, processor.image_processor), expected)


def test_the_collator_gives_the_same_batch_with_and_without_the_cache(tmp_path, processor):
    images = [Image.effect_noise((120, 100), 40).convert("RGB") for _ in range(3)]
    targets = ["scratch<loc_1><loc_2><loc_300><loc_400>", "", "spot<loc_5><loc_6><loc_7><loc_8>"]
    pairs = list(zip(images, targets, strict=True))
    plain = DetectionCollator(processor)([{"image": i, "target": t} for i, t in pairs])
    cached = DetectionCollator(processor, PixelCache(tmp_path, processor.image_processor))(
        [{"image": cell(i, "PNG"), "target": t} for i, t in pairs])
    assert set(plain) == set(cached)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(plain[key], cached[key]), key
    assert torch.equal(normalise_on_device(cached["pixel_values"], processor.image_processor),
                       plain["pixel_values"])
    # Each tensor owns its memory: on a GPU machine the DataLoader pins every batch, and pinning
    # refused the prompt's ids when they were one row expanded to the batch (found on an H200:
    # "more than one element of the written-to tensor refers to a single memory location").
    for key, tensor in cached.items():
        assert tensor.is_contiguous() and 0 not in tensor.stride(), key
