"""A step's time limit, checked where the step can stop cleanly: between training steps, between
evaluation batches.

Prefect's own `timeout_seconds` on a task run in the main thread raises from a SIGALRM handler,
once. When the signal lands while Python runs a finalizer (a `__del__`, a weakref callback: many
a second in torch and tokenizer code), the exception is printed as "ignored" and the step runs
on, past its limit, to the end. A check of our own at every step cannot be lost that way;
Prefect's timeout stays on the tasks as the backstop for a step stuck inside one long call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import monotonic


class StepTimedOut(TimeoutError):
    """A step ran past its limit. A TimeoutError: Prefect records the task run as TimedOut, and
    the retry conditions do not try it again."""


@dataclass(frozen=True)
class Deadline:
    """`Deadline("training", 720, "train.timeout_minutes")`, started when made; `check()` raises
    StepTimedOut once the minutes have passed."""

    what: str
    minutes: float
    setting: str  # the config key that sets the limit, for the message
    started: float = field(default_factory=lambda: monotonic())  # looked up when called: a test's clock

    def check(self) -> None:
        elapsed = monotonic() - self.started
        if elapsed > self.minutes * 60:
            raise StepTimedOut(f"{self.what} timed out after {elapsed:.1f} s, past its limit of "
                               f"{self.minutes:g} min ({self.setting})")
