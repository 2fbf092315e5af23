"""What makes a Prefect task's result reusable across nightly runs.

Prefect's DEFAULT policy includes the flow run id, so it never reuses a result from last night.
Ours: the task's inputs (small manifests with content hashes, config sections), its source, and
the code version of the whole `tasks` package, every subfolder included (a change in a pure
function it calls counts). This module imports nothing from `tasks`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
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


CACHE_POLICY = INPUTS + TASK_SOURCE + CodeVersion()


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
