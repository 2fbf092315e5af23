"""What makes a Prefect task's result reusable across nightly runs.

Prefect's DEFAULT policy includes the flow run id, so it never reuses a result from last night.
Ours: the task's inputs (small manifests with content hashes, config sections), its source, the
code version of the whole `tasks` package, every subfolder included (a change in a pure function
it calls counts), and the versions of the libraries that shape the step's result (a new Pillow
decodes differently, a new transformers trains differently). This module imports nothing from
`tasks`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

TASKS_ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_version(root: Path = TASKS_ROOT) -> str:
    """A hash of every module under `tasks/`, recursively (an edit in any stage counts)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class CodeVersion(CachePolicy):
    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        return code_version()


def step_policy(ignore: tuple[str, ...] = ()) -> CachePolicy:
    """The task's inputs (less those named in `ignore`), its source and the code version.
    (Prefect's `policy - "name"` on a compound policy adds a second inputs policy beside the
    first, which still hashes the name: the inputs part is built without the names here.)"""
    inputs = INPUTS
    for name in ignore:
        inputs = inputs - name
    return inputs + TASK_SOURCE + CodeVersion()


CACHE_POLICY = step_policy()

# The libraries whose version changes a step's result, per kind of step.
IMAGE_LIBRARIES = ("pillow",)
PUBLISH_LIBRARIES = ("pillow", "datasets", "pyarrow")
TRAINING_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "datasets",
                      "pillow", "torchvision")
EVALUATION_LIBRARIES = (*TRAINING_LIBRARIES, "faster-coco-eval")


def library_versions(libraries: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in libraries:
        try:
            versions[name] = package_version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass
class LibraryVersions(CachePolicy):
    """Adds library versions to the key. Build it with `libraries=` by keyword (CachePolicy's own
    first field is `key_storage`)."""

    libraries: tuple[str, ...] = ()

    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        return json.dumps(library_versions(self.libraries), sort_keys=True)


def cache_policy(libraries: tuple[str, ...], ignore: tuple[str, ...] = ()) -> CachePolicy:
    """`step_policy(ignore)` plus the versions of the libraries that shape the step's result."""
    return step_policy(ignore) + LibraryVersions(libraries=libraries)


def folder_hash(folder: str | Path) -> str:
    """Content hash of every file in a folder (a model's weights and processor files)."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]
