"""The training input pipeline: each image decoded and resized once, not once an epoch.

The processor's work per image is decode -> resize (to 768 x 768 for Florence-2-base) ->
rescale and normalise to float. The first two depend only on the image's bytes, so their result
(uint8, 1.7 MB at 768 px) is kept in a folder keyed by a hash of those bytes and the processor's
size, and read back every later epoch. Normalising is left to the device the model is on
(`normalise_on_device`, called by the Trainer on each batch), so a batch crosses to the GPU as
uint8, a quarter of the float bytes, and the CPU never does float work on pixels. Exactness is
tested: the values are the processor's own, to the last bit.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
from pathlib import Path

import numpy as np


class PixelCache:
    """Resized uint8 pixels per image content, on disk (a worker process may share it)."""

    def __init__(self, folder: str | Path, image_processor) -> None:
        self.folder = Path(folder)
        self.processor = image_processor
        size = image_processor.size
        self.key = f"{size['height']}x{size['width']}-r{int(image_processor.resample)}"

    def _path(self, data: bytes) -> Path:
        digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        return self.folder / digest[:2] / f"{digest}-{self.key}.npy"

    def resized(self, image: dict) -> np.ndarray:
        """CHW uint8 for a dataset image cell read with `decode=False` ({bytes, path})."""
        path = self._path(image["bytes"])
        if path.exists():
            return np.load(path)
        from PIL import Image

        with Image.open(io.BytesIO(image["bytes"])) as decoded:
            pixels = self.processor(images=[decoded.convert("RGB")], do_rescale=False,
                                    do_normalize=False, return_tensors="np")["pixel_values"][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        # Ranks on several machines may share the folder: the host keeps their names apart.
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, pixels.astype(np.uint8, copy=False))
        tmp.replace(path)  # atomic: a parallel reader never sees half a file
        return pixels

    def batch(self, images: list[dict]):
        import torch

        return torch.from_numpy(np.stack([self.resized(image) for image in images]))


def normalise_on_device(pixel_values, image_processor):
    """uint8 pixels (already on the model's device) -> the processor's rescaled, normalised
    float32 values, computed the way the processor computes them; float input is returned as
    it is."""
    import torch
    from torchvision.transforms.v2 import functional

    if pixel_values.dtype != torch.uint8:
        return pixel_values
    # As transformers' torch backend does: the rescale folded into mean and std.
    mean = torch.tensor(image_processor.image_mean, device=pixel_values.device) * (
        1.0 / image_processor.rescale_factor)
    std = torch.tensor(image_processor.image_std, device=pixel_values.device) * (
        1.0 / image_processor.rescale_factor)
    return functional.normalize(pixel_values.to(torch.float32), mean, std)
