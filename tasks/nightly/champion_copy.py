"""A line's local copy of a registered champion: one folder per registry, model name and version
(a copy of version 3 of another registry or model is another folder), trusted only when its
files' hash is the one the version was registered with (its `model_files` tag). A copy that
differs (a download cut short, a file changed or lost) is downloaded again into a staging
folder, checked, and swapped in whole."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path

from tasks.core.caching import folder_hash
from tasks.nightly.registry import RegistryTarget, download_version

STAGING = ".partial-"  # a staging folder's name: `.partial-<copy key>-<random>`


class ChampionFilesDiffer(RuntimeError):
    """The registry's files of a version are not the files it was registered with."""


def copy_key(registry: RegistryTarget, version: int) -> str:
    """`v<version>-<hash of registry URI, model name, version>`: readable, and never shared by two
    registries or models."""
    digest = hashlib.sha256(f"{registry.tracking_uri}\n{registry.model_name}\n{version}"
                            .encode()).hexdigest()[:12]
    return f"v{version}-{digest}"


def is_intact(model_dir: Path, model_files: str | None) -> bool:
    """The copy holds the registered files. A version registered without their hash is trusted
    when its copy exists: a copy only appears once its download finished (see `local_champion`)."""
    if not model_dir.is_dir():
        return False
    if model_files:
        return folder_hash(model_dir) == model_files
    return (model_dir / "config.json").exists() or (model_dir / "adapter_config.json").exists()


def local_champion(registry: RegistryTarget, champion: dict, download_to: str | Path) -> Path:
    """The champion's model folder under `download_to`, downloaded (again) unless an intact copy
    is there. `champion`: `champion_version`'s answer (version, tags, run id)."""
    root = Path(download_to)
    key = copy_key(registry, champion["version"])
    folder, expected = root / key, champion["tags"].get("model_files")
    if is_intact(folder / "model", expected):
        return folder / "model"
    root.mkdir(parents=True, exist_ok=True)
    for left in root.glob(f"{STAGING}{key}-*"):  # a download a kill cut short (runs hold a lock)
        shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{key}-", dir=root))
    try:
        fresh = download_version(registry.tracking_uri, champion["run_id"], staging)
        if expected and folder_hash(fresh) != expected:
            raise ChampionFilesDiffer(
                f"{registry.model_name} v{champion['version']} in {registry.tracking_uri}: the "
                f"downloaded files' hash is not the registered one ({expected})")
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "model"


def _swap_in(staged: Path, folder: Path) -> None:
    """`staged` becomes `folder` by renames: a reader sees the old copy, none, or the new one,
    never half of one."""
    old = folder.with_name(f"{STAGING}{folder.name}-old-{uuid.uuid4().hex[:8]}")
    if folder.exists():
        folder.rename(old)
    staged.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
