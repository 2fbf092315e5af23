"""Helpers the tests share (no side effects: the environment is set up in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(folder: str) -> Path:
    """A folder of ../shared/data, or a skip that says why."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it sits beside the repo in CI)")
    return path


def prepare_without_prefect(source: Path, dataset_dir: Path, home: Path,
                            split: dict | None = None) -> Path:
    """The prepare steps called as the plain functions they are (the flow composes the same)."""
    from tasks.core.config import DatasetConfig
    from tasks.dataset.local_run import prepare_steps

    config = DatasetConfig.model_validate({
        "name": "synthetic", "grayscale": "convert", "shard_size": 16,
        "source": {"format": "voc", "images": source / "images", "annotations": source / "annotations"},
        "split": split or {"train": 0.7, "validation": 0.15, "test": 0.15}})
    prepare_steps(config, dataset_dir, home)
    return dataset_dir


class TasksCopy:
    """A copy of the `tasks` package that the code closures (core/code_versions.py) are hashed
    from while the test runs, so that a test edits code without touching the repo."""

    def __init__(self, tmp_path: Path, monkeypatch) -> None:
        import shutil

        from tasks.core import code_versions

        self.root = Path(shutil.copytree(code_versions.TASKS_ROOT, tmp_path / "tasks",
                                         ignore=shutil.ignore_patterns("__pycache__")))
        monkeypatch.setattr(code_versions, "TASKS_ROOT", self.root)

    def edit(self, module: str, old: str, new: str) -> None:
        """Replace `old` (which must be there) in the copy's `module` (a path under tasks/)."""
        from tasks.core.code_versions import _closure_version

        path = self.root / module
        text = path.read_text(encoding="utf-8")
        assert old in text, (module, old)
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
        _closure_version.cache_clear()  # hashes are kept per process: this one changed under it

    def append(self, module: str, line: str = "# an edit\n") -> None:
        """Add a line at the end of the copy's `module`."""
        text = (self.root / module).read_text(encoding="utf-8")
        self.edit(module, text, text + line)


def artifacts_of(flow_run_id) -> dict:
    """The artifacts this very flow run created, by key (not any earlier run's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC, limit=50, offset=0)
    return {a.key: a for a in artifacts}


def logs_of(flow_run_id) -> list[str]:
    """The messages of a flow run's logs (its tasks' included), as the Prefect UI shows them."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs reach the API in batches: send what is pending
    with get_client(sync_client=True) as client:
        for _ in range(40):  # and give the server a moment to store them
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200, offset=0, sort=LogSort.TIMESTAMP_ASC)
            if logs:
                break
            time.sleep(0.25)
    return [log.message for log in logs]


def registry_and_model(tmp_path: Path) -> tuple[str, Path]:
    """An embedded MLflow registry and a model folder to register in it."""
    from tasks.nightly.registry import embedded_tracking_uri

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    return embedded_tracking_uri(tmp_path / "mlflow"), model_dir


def demo_config(source: Path, name: str = "demo") -> str:
    return f"""# Synthetic LabelImg-style defects made by `defectflow demo`.
name: {name}
source: {{format: voc, images: {source / 'images'}, annotations: {source / 'annotations'}}}
grayscale: convert
augment: {{hflip: true, vflip: false}}
split: {{train: 0.7, validation: 0.15, test: 0.15}}
publish: {{target: local}}
"""


def tiny_nightly_config(name: str, source: Path, max_steps: int, eval_steps: int) -> str:
    """A line's config for nightly tests: the tiny model without LoRA, a few steps, no warm start
    (a test adds what it is about at the end)."""
    return f"""name: {name}
source: {{format: voc, images: {source}/images, annotations: {source}/annotations}}
grayscale: convert
split: {{train: 0.6, validation: 0.2, test: 0.2}}
labels: [patch, scratch, spot]
model: {{checkpoint: tiny, lora: null}}
train: {{max_steps: {max_steps}, lr: 1.0e-3, batch_size: 8, eval_steps: {eval_steps}, patience: 10,
        warm_start: false}}
"""


def scripted_step_scores(tokens, logprobs, vocab_size: int, spare_ids=(0, 1)):
    """What `generate(output_scores=True)` returns per step for scripted outputs: at each step
    the scripted token gets probability exp(logprob) and a spare token (never a location bin)
    the rest. tokens, logprobs: [rows, steps]."""
    import torch

    tokens, logprobs = torch.as_tensor(tokens), torch.as_tensor(logprobs, dtype=torch.float32)
    steps = []
    for step in range(tokens.shape[1]):
        probs = torch.zeros(tokens.shape[0], vocab_size)
        for row, (token, logprob) in enumerate(zip(tokens[:, step].tolist(),
                                                    logprobs[:, step].tolist(), strict=True)):
            spare = spare_ids[0] if token != spare_ids[0] else spare_ids[1]
            probs[row, token] = float(torch.tensor(logprob).exp())
            probs[row, spare] += 1 - probs[row, token]
        steps.append(probs.clamp(min=1e-30).log())
    return tuple(steps)
