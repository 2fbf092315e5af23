"""The home's shared parts that no kept dataset uses: manifests and content-store entries.

What is kept is marked from the newest prepare of every prepared folder Prefect knows (each
line's `prepared/`, each `defectflow prepare --out`): the manifests its task results name (a
next night's Cached steps hand those on), and the images and verdicts those manifests name. The
rest is collected: a step whose Cached result names a collected manifest runs again
(core/intermediates.py), a memo naming a collected store file is a miss (core/memo.py), a
derived image is made again from its source (images/store.py). Memo files (`store/memos/`)
carry the time a run last used them (core/memo.py `reached`): those no kept run reached (last
used before the oldest of each folder's newest computing prepare started: chunks replaced since,
memos of an earlier code version or setting) are collected; a memo collected is a miss, the work
is done again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic_core import from_json

from tasks.core.home import Home
from tasks.core.processes import process_alive
from tasks.images.store import store_version
from tasks.nightly.liveness import LOCK_FILE, lock_holder, names_no_holder

BUSY_FOR_S = 24 * 3600  # a `prepare` command "running" for longer than this was killed
PAGE = 200
RAN = ["Completed", "Failed", "Crashed", "TimedOut", "Running", "Retrying"]  # not "Cached"
MEMO_STEPS = {"ingest", "process-images", "target-budget", "augment", "loc-targets"}  # use memos


@dataclass
class References:
    """What the newest prepares name: manifest paths, or why nothing may be collected now."""

    manifests: set[str] = field(default_factory=set)
    busy: str | None = None  # e.g. a prepare running now: its files are not all named yet
    # Memo files last reached before this were reached by no kept run: the start of the oldest
    # of each folder's newest prepare that computed something (None: unknown, memos stay).
    memos_since: float | None = None


def _running(run, ours: Path | None, now: float) -> bool:
    """Whether a prepare Prefect calls running still is: its line's lock holder is alive (not
    when the line is `ours`: we hold its lock, it was killed), or, for a `prepare` command,
    it started less than BUSY_FOR_S ago."""
    if run.state is None or not (run.state.is_running() or run.state.is_pending()):
        return False
    out_dir = run.parameters.get("out_dir")
    work = Path(out_dir).resolve().parent if out_dir else None
    if work is not None and work == ours:
        return False
    holder = lock_holder(work) if work is not None else None
    if holder is not None:
        return process_alive(holder[0])
    if work is not None and names_no_holder(work / LOCK_FILE):
        return False  # its lock was let go: nothing holds the line
    started = run.start_time or run.expected_start_time
    return started is not None and now - started.timestamp() < BUSY_FOR_S


def no_result_kept(state) -> bool:
    """Whether a task run keeps no result a later run could be handed: it was never persisted
    (a step that keeps none, like the report), or the local result storage says its record is
    gone (its folder is there, the file is not). A record that is there but cannot be read is
    not gone, nor is one whose folder vanished (a storage that went away says nothing)."""
    from prefect._internal.result_records import ResultRecordMetadata

    data = state.data
    if data is None:
        return True
    if not isinstance(data, ResultRecordMetadata) or data.storage_block_id is not None:
        return False
    record = Path(data.storage_key)
    return record.parent.is_dir() and not record.exists()


def prepared_references(ours: Path | None = None, now: float | None = None,
                        home: Path | None = None) -> References:
    """The manifests named by the task results of the newest prepare of each output folder,
    and of any later unfinished one (its Cached results are tomorrow's), from Prefect's API.
    `ours`: the work dir whose lock the caller holds; `home`: only that home's prepares (a
    prepare names its home; one that does not may be any home's, and counts)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks.core.intermediates import manifests_in

    now = time.time() if now is None else now
    with get_client(sync_client=True) as client:
        runs, offset = [], 0
        while True:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["prepare"])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=PAGE, offset=offset)
            runs += [run for run in page if _of_home(run, home)]
            offset += PAGE
            if len(page) < PAGE:
                break
        for run in runs:
            if _running(run, ours, now):
                return References(busy=f"a prepare is running ({run.name}, "
                                       f"{run.parameters.get('out_dir')})")
        chosen, done = [], set()
        for run in runs:  # newest first: each folder's runs down to its newest completed one
            folder = run.parameters.get("out_dir")
            if folder in done:
                continue
            chosen.append(run.id)
            if run.state is not None and run.state.is_completed():
                done.add(folder)
        memos_since = _memos_reached_since(client, runs)
        names: set[str] = set()
        for start in range(0, len(chosen), PAGE):
            ids = chosen[start:start + PAGE]
            task_offset = 0
            while True:
                tasks = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                    limit=PAGE, offset=task_offset)
                for task_run in tasks:
                    if task_run.state is None or not task_run.state.is_completed() or \
                            no_result_kept(task_run.state):
                        continue
                    try:
                        result = task_run.state.result(raise_on_failure=False)
                    except Exception as exc:  # noqa: BLE001 - unread is not "names nothing"
                        return References(busy=f"the result of task run {task_run.name} could "
                                               f"not be read ({type(exc).__name__}: {exc})")
                    names.update(str(Path(m.path).resolve()) for m in manifests_in(result))
                task_offset += PAGE
                if len(tasks) < PAGE:
                    break
    return References(manifests=names, memos_since=memos_since)


def _of_home(run, home: Path | None) -> bool:
    named = run.parameters.get("home")
    return home is None or not named or Path(named).resolve() == home.resolve()


def _memos_reached_since(client, runs: list) -> float | None:
    """The start of the oldest of each output folder's newest prepare that ran a step that uses
    memos (Completed, Failed..., not Cached: it reached every memo it used; a prepare whose
    steps all came Cached reached none; a task run Prefect has not recorded yet is not known to
    have run, which only moves this earlier). None when a folder has no such run Prefect still knows
    of (its runs vacuumed but for Cached ones): then no memo is collected."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )

    since: dict[str, float | None] = {}
    for run in runs:  # newest first
        folder = run.parameters.get("out_dir")
        if since.get(folder) is not None:
            continue
        since.setdefault(folder, None)
        if run.start_time is None:
            continue
        ran = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                name=TaskRunFilterStateName(any_=RAN))))
        if any(task_run.name.rsplit("-", 1)[0] in MEMO_STEPS for task_run in ran):
            since[folder] = run.start_time.timestamp()
    if None in since.values():
        return None
    return min(since.values(), default=None)


def images_named(manifests: set[str]) -> tuple[set[str], set[str]]:
    """(content hashes, derived image paths) that the records of these manifests name."""
    shas, paths = set(), set()
    for name in manifests:
        try:
            handle = open(name, encoding="utf-8")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue
        with handle:
            for line in handle:
                if '"sha256"' not in line:
                    break  # rejections and candidates name no image of the store
                record = from_json(line)
                if record.get("sha256"):
                    shas.add(record["sha256"])
                if record.get("processed_path"):
                    paths.add(str(Path(record["processed_path"]).resolve()))
    return shas, paths


def _files(folder: Path) -> Iterator[os.DirEntry]:
    """The files under `folder` (its sharded `xx/` subfolders included)."""
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            yield from _files(Path(entry.path))
        elif entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
            yield entry


def _remove(entry: os.DirEntry, cutoff: float) -> int:
    """Remove a file last written before `cutoff`; its bytes (0 when it stays or is gone)."""
    stat = entry.stat(follow_symlinks=False)
    if stat.st_mtime >= cutoff:
        return 0  # written by a run since: not ours to judge
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        return 0
    return stat.st_size


@dataclass
class Collected:
    files: int = 0
    bytes: int = 0

    def add(self, freed: int) -> None:
        if freed:
            self.files, self.bytes = self.files + 1, self.bytes + freed


def _cannot_collect(references: References | None) -> str | None:
    """Why nothing shared may be collected now (None: it may)."""
    if references is None:
        return "Prefect's run history could not be read"
    if references.busy:
        return references.busy
    vanished = sorted({str(Path(name).parent) for name in references.manifests
                       if not Path(name).parent.is_dir()})
    return f"the folder of kept manifests {vanished[0]} is not there" if vanished else None


def collect_home(home: Home, references: References | None, cutoff: float) -> dict:
    """Remove the manifests `references` does not name, the store's verdicts and images of
    images no kept manifest names, and the shard memos naming a manifest that is gone; only
    files last written before `cutoff`. None (Prefect's history unreadable), a busy home, or a
    folder of kept manifests that vanished (unmounted, moved: what they name is unknown)
    collects nothing."""
    if reason := _cannot_collect(references):
        return {"skipped": reason, "manifests": vars(Collected()), "store": vars(Collected()),
                "memos": vars(Collected())}
    manifests, store = Collected(), Collected()
    for entry in _files(home.manifests):
        if entry.name.endswith(".jsonl") and str(Path(entry.path).resolve()) not in references.manifests:
            manifests.add(_remove(entry, cutoff))
    shas, paths = images_named(references.manifests)
    current = f"-{store_version()}."
    for entry in _files(home.store / "inspect"):
        if entry.name[:64] not in shas:
            store.add(_remove(entry, cutoff))
    for entry in _files(home.store / "images"):
        named = str(Path(entry.path).resolve()) in paths
        if not named and not (entry.name[:64] in shas and current in entry.name):
            store.add(_remove(entry, cutoff))
    for entry in _files(home.store / "shards"):
        if not _names_only_existing_manifests(Path(entry.path)):
            store.add(_remove(entry, cutoff))
    memos = Collected()
    if references.memos_since is not None:  # what no kept run reached (memo.reached)
        for entry in _files(home.store / "memos"):
            memos.add(_remove(entry, min(cutoff, references.memos_since)))
    return {"skipped": None, "manifests": vars(manifests), "store": vars(store),
            "memos": vars(memos)}


def _names_only_existing_manifests(memo: Path) -> bool:
    """A shard memo is worth keeping while every manifest it names is there."""
    try:
        named = json.loads(memo.read_bytes())
    except (OSError, ValueError):
        return False
    paths = [value["path"] for value in named.values() if isinstance(value, dict) and "path" in value]
    return all(os.path.isfile(path) for path in paths)
