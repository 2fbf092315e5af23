"""Home collection marks what the newest prepares name from their task results in Prefect: a
result that is there but cannot be read is "could not ask", never "names nothing": nothing shared
is collected on it. A record that is gone (a cache entry no run can hit) names nothing."""

import time
from pathlib import Path

import pytest

from flows.prepare import prepare
from tasks.core.home import Home
from tasks.demo.sample_data import generate
from tasks.nightly.home_collection import collect_home, prepared_references
from tests.support import demo_config

pytestmark = pytest.mark.usefixtures("prefect_server")


def persisted_records(flow_run_id) -> dict[str, Path]:
    """The result record file of each task run of a flow run that kept one, by task run name."""
    from prefect._internal.result_records import ResultRecordMetadata
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: Path(run.state.data.storage_key) for run in runs
            if isinstance(run.state.data, ResultRecordMetadata)
            and Path(run.state.data.storage_key).is_file()}


def test_a_task_result_that_cannot_be_read_keeps_every_manifest(tmp_path, home):
    source = tmp_path / "source"
    generate(source, count=8, size=48, seed=5, troubles=False)
    (tmp_path / "demo.yaml").write_text(demo_config(source), encoding="utf-8")
    state = prepare(str(tmp_path / "demo.yaml"), str(tmp_path / "out"), str(home), return_state=True)
    assert state.is_completed()
    records = persisted_records(state.state_details.flow_run_id)
    name, record = next((name, path) for name, path in sorted(records.items())
                        if name.startswith("ingest"))
    manifests = sorted(str(p.resolve()) for p in (home / "manifests").rglob("*.jsonl"))
    assert manifests and set(manifests) <= prepared_references().manifests

    kept = record.read_bytes()
    record.write_bytes(b"not a result record")  # a disk's fault, a sync tool's half copy
    try:
        unread = prepared_references()
        assert unread.busy and name in unread.busy and "could not be read" in unread.busy
        report = collect_home(Home(home), unread, time.time() + 60)
        assert report["skipped"] == unread.busy
        assert sorted(str(p.resolve()) for p in (home / "manifests").rglob("*.jsonl")) == manifests
    finally:
        record.write_bytes(kept)

    record.unlink()  # gone: a cache entry no run can hit names nothing, and does not stop it
    after = prepared_references()
    assert after.busy is None or name not in after.busy
