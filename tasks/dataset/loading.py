"""Reading a published dataset with `datasets`, its Arrow copy kept beside the dataset.

`datasets.load_dataset(folder)` converts the parquet files into Arrow files (images included)
under ~/.cache/huggingface/datasets, keyed by the files' names and times, and never removes
them. A line republishes its dataset every night, so every night left a whole copy of its
dataset in the user's home directory, for good. Here the copy lives beside the dataset folder
(`.<folder>.arrow-cache/<key of its files>/`), the steps of one night share it, and loading
files that changed removes the copies of the files before them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

ARROW_CACHE_SUFFIX = ".arrow-cache"


def arrow_cache_dir(dataset_dir: str | Path) -> Path:
    """Where the Arrow copies of the dataset at `dataset_dir` are kept."""
    folder = Path(dataset_dir).resolve()
    return folder.parent / f".{folder.name}{ARROW_CACHE_SUFFIX}"


def files_key(dataset_dir: str | Path) -> str:
    """A key of the dataset folder's files (names, sizes, modification times): publishing
    again, or any file changed by hand, gives a new key."""
    folder = Path(dataset_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_published(dataset_dir: str | Path, split: str | None = None):
    """`datasets.load_dataset(dataset_dir, split=split)`, converted once per version of the
    folder's files into `arrow_cache_dir`; the copies of earlier versions are removed first. A
    dataset in a folder whose parent is read-only is read as `datasets` does by default."""
    import datasets

    folder = Path(dataset_dir).resolve()
    if not os.access(folder.parent, os.W_OK):
        return datasets.load_dataset(str(folder), split=split)
    cache, key = arrow_cache_dir(folder), files_key(folder)
    if cache.is_dir():
        for earlier in cache.iterdir():
            if earlier.name != key:
                # A process still reading an earlier copy keeps it mapped: Linux frees the
                # space when that process lets go.
                shutil.rmtree(earlier, ignore_errors=True)
    return datasets.load_dataset(str(folder), split=split, cache_dir=str(cache / key))
