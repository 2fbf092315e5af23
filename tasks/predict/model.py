"""Which model `predict` uses: a folder written by `train` (or its `model/` inside), a full
checkpoint folder, or the registry's champion (`champion`, `champion@MODEL_NAME`)."""

from __future__ import annotations

from pathlib import Path

from tasks.nightly.registry import champion_version, download_version


class ModelNotFound(ValueError):
    """A model argument that names nothing loadable; the message says what to give instead."""


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def resolve_model(spec: str, tracking_uri: str | None, default_name: str | None,
                  download_to: Path) -> Path:
    """The model folder `spec` names; a champion is downloaded from the registry into
    `download_to` (tracking_uri and default_name come from the config)."""
    if spec == "champion" or spec.startswith("champion@"):
        name = spec.partition("@")[2] or default_name
        if tracking_uri is None or not name:
            raise ModelNotFound(f"{spec!r} is looked up in a registry: give --config (the "
                                "dataset config whose nightly retrain registered it)")
        champion = champion_version(tracking_uri, name)
        if champion is None:
            raise ModelNotFound(f"the registry {tracking_uri} has no champion for {name!r} yet: "
                                "run the nightly retrain (`defectflow run`) first")
        return download_version(tracking_uri, champion["run_id"],
                                download_to / f"{name}-v{champion['version']}")
    path = Path(spec).expanduser().resolve()
    for candidate in (path, path / "model"):
        if is_model_folder(candidate):
            return candidate
    raise ModelNotFound(f"{spec!r} is not a model folder (no config.json or adapter_config.json "
                        "in it or in its model/): give the folder `train` wrote, or `champion`")
