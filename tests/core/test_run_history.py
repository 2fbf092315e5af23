"""Reading a flow run's task states while Prefect is still recording them."""

import pytest

from tasks.core.run_history import settled


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reads(*answers):
    """A reader that gives each answer in turn, then the last one for ever."""
    answers = list(answers)

    def read():
        return answers.pop(0) if len(answers) > 1 else answers[0]
    return read


def test_waits_for_runs_not_yet_recorded_and_unfinished_ones():
    clock = Clock()
    read = reads([("ingest", "Cached", True)],
                 [("ingest", "Cached", True), ("publish", "?", False)],
                 [("ingest", "Cached", True), ("publish", "Running", False)],
                 [("ingest", "Cached", True), ("publish", "Completed", True)])
    rows = settled(read, limit_s=15, clock=clock, sleep=clock.sleep)
    assert rows == [("ingest", "Cached", True), ("publish", "Completed", True)]
    assert clock.now < 2  # four reads to get there, then a second of reads that agree


def test_a_recorder_that_pauses_between_two_task_runs_is_waited_for():
    """Under load the server writes one task run, pauses half a second, writes the next: two
    reads that agree within the pause are not the end."""
    clock = Clock()

    def read():
        return [("shard", "Completed", True)] * (1 if clock.now < 0.5 else 2)

    rows = settled(read, limit_s=15, clock=clock, sleep=clock.sleep)
    assert len(rows) == 2


def test_a_run_that_stays_unfinished_ends_the_wait_after_a_while_not_at_the_limit():
    clock = Clock()
    rows = settled(reads([("train", "NotReady", False)]), limit_s=15, clock=clock, sleep=clock.sleep)
    assert rows == [("train", "NotReady", False)]
    assert 0.5 < clock.now < 2


def test_the_limit_ends_a_wait_that_never_settles():
    clock = Clock()
    count = iter(range(10**6))
    rows = settled(lambda: [("train", f"Running {next(count)}", False)], limit_s=3,
                   clock=clock, sleep=clock.sleep)
    assert rows[0][1].startswith("Running")
    assert 3 <= clock.now < 3.5


def test_no_runs_yet_is_not_taken_for_a_flow_without_tasks_at_once():
    clock = Clock()
    read = reads([], [], [("ingest", "Completed", True)])
    assert settled(read, limit_s=15, clock=clock, sleep=clock.sleep) == [("ingest", "Completed", True)]


def test_a_retrying_run_recorded_late_is_waited_for_until_it_ends():
    """Under load the server records a task's end seconds late: its Retrying is not its end."""
    clock = Clock()

    def read():
        return [("train", "Retrying", False)] if clock.now < 3 else [("train", "Failed", True)]

    assert settled(read, limit_s=15, clock=clock, sleep=clock.sleep) == [("train", "Failed", True)]


@pytest.mark.usefixtures("prefect_server")
def test_every_task_run_of_a_large_night_is_read():
    """The server answers 200 task runs per read; a night of 100,000 images has ~420."""
    from prefect import flow, task

    from tasks.core.run_history import task_run_states

    @task
    def shard(number: int) -> int:
        return number

    @flow
    def night() -> None:
        shard.map(range(230)).wait()

    state = night(return_state=True)
    states = task_run_states(state.state_details.flow_run_id)
    assert len(states) == 230 and {name for _, name in states} == {"Completed"}
