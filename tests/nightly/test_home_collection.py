"""Home collection marks what the newest prepares name from their task results in Prefect: a
result that is there but cannot be read is "could not ask", never "names nothing": nothing shared
is collected on it. A record that is gone (a cache entry no run can hit) names nothing."""

import time
from pathlib import Path

import pytest

from flows.prepare import prepare
from tasks.core.home import Home
from tasks.core.run_history import task_run_states
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
    task_run_states(state.state_details.flow_run_id)  # recorded by the server: read back
    records = persisted_records(state.state_details.flow_run_id)
    name, record = next((name, path) for name, path in sorted(records.items())
                        if name.startswith("ingest"))
    manifests = sorted(str(p.resolve()) for p in (home / "manifests").rglob("*.jsonl"))
    assert manifests and set(manifests) <= prepared_references(home=home).manifests

    kept = record.read_bytes()
    record.write_bytes(b"not a result record")  # a disk's fault, a sync tool's half copy
    try:
        unread = prepared_references(home=home)
        assert unread.busy and name in unread.busy and "could not be read" in unread.busy
        report = collect_home(Home(home), unread, time.time() + 60)
        assert report["skipped"] == unread.busy
        assert sorted(str(p.resolve()) for p in (home / "manifests").rglob("*.jsonl")) == manifests
    finally:
        record.write_bytes(kept)

    record.unlink()  # gone: a cache entry no run can hit names nothing, and does not stop it
    after = prepared_references(home=home)
    assert after.busy is None or name not in after.busy


def test_memo_files_no_kept_run_reached_are_collected(tmp_path, home):
    """A night with new images replaces the chunks they fall into: the replaced chunk files, and
    the memos of an earlier code version, were reached by no kept run and go; what the newest
    computing prepare reached stays (an unchanged rerun, all Cached, reaches none and moves
    nothing)."""
    from prefect.client.orchestration import get_client

    from tasks.nightly.home_collection import References, _memos_reached_since

    source = tmp_path / "source"
    generate(source, count=24, size=48, seed=5, troubles=False)
    (tmp_path / "demo.yaml").write_text(demo_config(source), encoding="utf-8")
    old_version = home / "store" / "memos" / "budget" / ("0" * 24 + ".chunks") / "ab" / "ab.txt"
    old_version.parent.mkdir(parents=True)
    old_version.write_text("an earlier code version's chunk\n")

    def night() -> None:
        state = prepare(str(tmp_path / "demo.yaml"), str(tmp_path / "out"), str(home),
                        return_state=True)
        assert state.is_completed()
        task_run_states(state.state_details.flow_run_id)  # recorded by the server: read back

    night()
    generate(source, count=6, size=48, seed=6, start=500, troubles=False)
    night()
    night()  # unchanged: every step Cached
    with get_client(sync_client=True) as client:
        ours = [run for run in client.read_flow_runs(sort="EXPECTED_START_TIME_DESC")
                if run.parameters.get("out_dir") == str(tmp_path / "out")]
        assert len(ours) == 3
        since = _memos_reached_since(client, ours)
    assert since == ours[1].start_time.timestamp()  # the second night's, not the Cached third's

    memo_files = [p for p in (home / "store" / "memos").rglob("*") if p.is_file()
                  and not p.name.startswith(".")]
    unreached = {p for p in memo_files if p.stat().st_mtime < since}
    assert old_version in unreached and len(unreached) > 1  # replaced chunks too
    kept = References(manifests={str(p.resolve()) for p in (home / "manifests").rglob("*.jsonl")},
                      memos_since=since)
    report = collect_home(Home(home), kept, time.time())
    assert report["memos"]["files"] == len(unreached)
    left = {p for p in (home / "store" / "memos").rglob("*") if p.is_file()
            and not p.name.startswith(".")}
    assert left == set(memo_files) - unreached
    # Unknown (a folder whose computing runs Prefect no longer has): no memo is collected.
    assert collect_home(Home(home), References(manifests=kept.manifests), time.time())[
        "memos"]["files"] == 0
