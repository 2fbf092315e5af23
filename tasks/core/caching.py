"""What makes a Prefect task's result reusable across nightly runs.

Prefect's DEFAULT policy includes the flow run id, so it never reuses a result from last night.
Ours: the task's inputs (small manifests with content hashes, config sections), its source, the
code version of the whole `tasks` package, every subfolder included (a change in a pure function
it calls counts), the generation of the folders it writes into (a manifests folder or content
store deleted and made again makes every result naming their files stale), and the versions of
the libraries that shape the step's result (a new Pillow decodes differently, a new
transformers trains differently). This module imports nothing from `tasks` but
`core.code_versions`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from tasks.core.code_versions import code_version


@dataclass
class CodeVersion(CachePolicy):
    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        return code_version()


GENERATION_FILE = ".generation"


def folder_generation(folder: str | Path) -> str:
    """Which incarnation of `folder` this is: a random id written into it when it is first
    seen (made if need be). A folder deleted and made again is a new generation."""
    marker = Path(folder) / GENERATION_FILE
    try:
        return marker.read_text(encoding="ascii")
    except FileNotFoundError:
        marker.parent.mkdir(parents=True, exist_ok=True)
    staged = marker.with_name(f"{GENERATION_FILE}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    staged.write_text(uuid.uuid4().hex, encoding="ascii")
    try:
        os.link(staged, marker)  # whole or absent, and never replacing another run's marker
    except FileExistsError:
        pass  # another run wrote it first: theirs counts
    except OSError:  # a filesystem without hard links: a rename (a race costs one more run)
        os.replace(staged, marker)
    finally:
        staged.unlink(missing_ok=True)
    return marker.read_text(encoding="ascii")


@dataclass
class FolderGenerations(CachePolicy):
    """Adds the generation of the folders a task writes into (its `manifests_dir` and
    `store_root` arguments, where it has them): after `<home>/manifests` or `<home>/store` was
    deleted, a result naming their files is not reused, the step runs again."""

    arguments: tuple[str, ...] = ("manifests_dir", "store_root")

    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str | None:
        folders = {name: folder_generation(inputs[name]) for name in self.arguments
                   if (inputs or {}).get(name)}
        return json.dumps(folders, sort_keys=True) if folders else None


def step_policy(ignore: tuple[str, ...] = ()) -> CachePolicy:
    """The task's inputs (less those named in `ignore`), its source, the code version and the
    generations of the folders it writes into. (Prefect's `policy - "name"` on a compound policy
    adds a second inputs policy beside the first, which still hashes the name: the inputs part
    is built without the names here.)"""
    inputs = INPUTS
    for name in ignore:
        inputs = inputs - name
    return inputs + TASK_SOURCE + CodeVersion() + FolderGenerations()


CACHE_POLICY = step_policy()

# The libraries whose version changes a step's result, per kind of step.
IMAGE_LIBRARIES = ("pillow",)
PUBLISH_LIBRARIES = ("pillow", "datasets", "pyarrow")
TRAINING_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "datasets",
                      "pillow", "torchvision")
EVALUATION_LIBRARIES = (*TRAINING_LIBRARIES, "faster-coco-eval")


def library_versions(libraries: tuple[str, ...]) -> dict[str, str]:
    return dict(_library_versions(libraries))


@functools.lru_cache(maxsize=32)
def _library_versions(libraries: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Read once per process (each task run's key asks): a library upgraded under a running
    process is not the one that process has loaded, so its first answer stays the true one."""
    versions = []
    for name in libraries:
        try:
            versions.append((name, package_version(name)))
        except PackageNotFoundError:
            versions.append((name, "absent"))
    return tuple(versions)


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
