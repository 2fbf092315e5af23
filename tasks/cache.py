"""What makes a Prefect task's result reusable across nightly runs.

Prefect's DEFAULT policy includes the flow run id, so it never reuses a result from last night.
Ours: the task's inputs (small manifests with content hashes, config sections), its source, and
the code version of the whole `tasks` package (a change in a pure function it calls counts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy


@lru_cache(maxsize=1)
def code_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class CodeVersion(CachePolicy):
    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        return code_version()


CACHE_POLICY = INPUTS + TASK_SOURCE + CodeVersion()


@dataclass
class SourceState(CachePolicy):
    """Adds the source folder's fingerprint (names, sizes, mtimes) to the key: new images -> miss.
    Build it with `argument=` by keyword: CachePolicy's own first field is `key_storage`."""

    argument: str = "source"

    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        from tasks.ingest import source_fingerprint

        return source_fingerprint(inputs[self.argument])



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
