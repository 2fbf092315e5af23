"""The demo's one piece of concurrency: the base trains on a thread while Prefect starts."""

import threading

import pytest

from flows.demo import in_background


def test_background_work_runs_beside_the_caller_and_hands_back_its_result():
    started, go_on = threading.Event(), threading.Event()

    def work():
        started.set()
        go_on.wait(5)
        return 42

    result = in_background(work)
    assert started.wait(5)  # it runs while the caller goes on
    go_on.set()
    assert result() == 42


def test_an_error_in_background_work_reaches_the_caller_when_it_waits():
    def work():
        raise ValueError("the base could not be built")

    result = in_background(work)
    with pytest.raises(ValueError, match="could not be built"):
        result()
