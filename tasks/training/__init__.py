"""Stage 4: fine-tuning Florence-2 (LoRA) or a ViT classifier with the Hugging Face Trainer."""

import os

# transformers (5.2x, with the `kernels` package it installs) swaps layers for kernels it
# downloads from the Hub when a model on a GPU changes mode: code fetched at run time, and on an
# offline GPU machine a crash at the first evaluation ("kernels-community/activation is not
# available in the local cache"). Every model of this package is loaded below this line; the
# ranks of a distributed training inherit it. Set USE_HUB_KERNELS=1 to allow them.
os.environ.setdefault("USE_HUB_KERNELS", "0")
