"""A cached result is trusted only while the intermediates it names are there.

A step whose Cached result names a manifest that is gone (cleaned by hand, a disk restored
without it) runs again with refresh_cache, which replaces the stale record: a missing
intermediate means "recompute", never a crash in the step that reads it. A whole folder deleted
is caught before, by its generation in every key (`caching.FolderGenerations`); this catches
single files.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prefect import Task, unmapped
from prefect.futures import wait
from prefect.states import State
from pydantic import BaseModel

from tasks.core.records import Manifest


def manifests_in(result: Any) -> Iterator[Manifest]:
    """Every manifest a step's result names: itself, in its fields, lists, tuples and dicts."""
    if isinstance(result, Manifest):
        yield result
    elif isinstance(result, BaseModel):
        for name in type(result).model_fields:
            yield from manifests_in(getattr(result, name))
    elif isinstance(result, list | tuple):
        for item in result:
            yield from manifests_in(item)
    elif isinstance(result, dict):
        for item in result.values():
            yield from manifests_in(item)


def is_stale(state: State) -> bool:
    """A Cached state whose result names a manifest file that is not there."""
    return state.name == "Cached" and not all(
        os.path.isfile(manifest.path) for manifest in manifests_in(state.result()))


def run_trusted(step: Task, **inputs: Any) -> State:
    """The final state of `step(**inputs)` in the running flow; a stale Cached one (`is_stale`)
    runs again with refresh_cache."""
    state = step(**inputs, return_state=True)
    if is_stale(state):
        state = step.with_options(refresh_cache=True)(**inputs, return_state=True)
    return state


def map_trusted(step: Task, over: str, values: list, **inputs: Any) -> list[State]:
    """`step` mapped over `values` (its argument `over`), the other inputs shared: the final
    state of each run, once all are done; the stale Cached ones run again with refresh_cache."""
    shared = {name: unmapped(value) for name, value in inputs.items()}
    futures = step.map(**{over: values}, **shared)
    wait(futures)
    states = [future.state for future in futures]
    stale = [n for n, state in enumerate(states) if is_stale(state)]
    if stale:
        again = step.with_options(refresh_cache=True).map(**{over: [values[n] for n in stale]},
                                                          **shared)
        wait(again)
        for n, future in zip(stale, again, strict=True):
            states[n] = future.state
    return states


class StepStates:
    """`run_trusted` and `map_trusted` that remember the final state of every task run, as the
    flow saw it: `counts()` -> {step name: {state name: task runs}}. A command's summary counts
    these instead of reading them back from Prefect's server, which records task runs from
    events after the flow has returned (10 s behind the flow at 100,000 images on 2 cores)."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter] = {}

    def _add(self, step: Task, states: list[State]) -> None:
        self._counts.setdefault(step.name, Counter()).update(state.name for state in states)

    def run(self, step: Task, **inputs: Any) -> State:
        state = run_trusted(step, **inputs)
        self._add(step, [state])
        return state

    def map(self, step: Task, over: str, values: list, **inputs: Any) -> list[State]:
        states = map_trusted(step, over, values, **inputs)
        self._add(step, states)
        return states

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: dict(sorted(counts.items())) for name, counts in self._counts.items()}
