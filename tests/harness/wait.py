"""Waiting for an event with a deadline, never for a fixed time: a fixed sleep passes or fails
with the machine's load, a deadline only fails when the event does not come."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something true and return that; AssertionError naming
    `what` once `timeout` seconds have passed (the predicate is asked once more at the end)."""
    deadline = time.monotonic() + timeout
    while True:
        late = time.monotonic() >= deadline
        if value := predicate():
            return value
        if late:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
