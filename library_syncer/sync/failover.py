"""The one upstream loop: sync.upstreams in order (or the one sync.peer), each inside its own SSH
connection, for the scheduled run (sync/run.py) and the change check (sync/poll.py) alike.

The loop owns the order, each upstream's share of sync.retry_budget, the upstreams a change
check found unreachable (the run that follows starts after them) and when to pass on to the
next one; a `Walker` (the run, the check) says what it does at an upstream and what an error
there means to it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from ..base.config import Config, SyncConfig
from ..base.errors import SyncerError
from .sshmux import SharedConnection

T = TypeVar("T")
R = TypeVar("R")
Tried = tuple[Config, SyncerError]  # an upstream passed over, with what it answered


def where(sync: SyncConfig) -> str:
    return f"{sync.peer}:{sync.port}"


def upstream_configs(config: Config) -> list[Config]:
    """The run's settings aimed at each upstream in turn (sync.upstreams, or sync.peer)."""
    return [replace(config, sync=config.sync.for_upstream(u))
            for u in config.sync.upstream_list()]


def budget_share(config: Config, index: int, count: int, started: float) -> Config:
    """Upstream `index` gets an equal share of what is left of sync.retry_budget: the run as a
    whole never retries longer than the budget, however many upstreams are listed, and an
    upstream that fails at once leaves its share to the next ones."""
    left = max(0.0, config.sync.retry_budget - (time.monotonic() - started))
    return replace(config, sync=replace(config.sync, retry_budget=left / (count - index)))


@dataclass(frozen=True)
class Turn:
    """One upstream's turn: the settings aimed at it (with its budget share), its place."""

    config: Config
    index: int  # in sync.upstreams, 0 = the first
    count: int  # how many are listed

    @property
    def where(self) -> str:
        return where(self.config.sync)


class Walker(Protocol[T, R]):
    """What the run or the check does at each upstream, and what an error there means."""

    def connect(self, turn: Turn) -> AbstractContextManager[SharedConnection | None]:
        """The turn's connection (None: each session connects on its own)."""

    def attempt(self, turn: Turn, connection: SharedConnection | None) -> T:
        """The work at this upstream."""

    def fails_over(self, error: SyncerError) -> bool:
        """Whether `error` (of the attempt) hands over to the next upstream."""

    def passed(self, turn: Turn, error: SyncerError, following: Turn | None) -> None:
        """An upstream passed over (`following`: the next one; None: it was the last)."""

    def exhausted(self, tried: Sequence[Tried]) -> SyncerError:
        """The run's error when every upstream was passed over."""

    def served(self, turn: Turn, connection: SharedConnection | None, result: T,
               tried: Sequence[Tried]) -> R:
        """The attempt succeeded (`tried`: the upstreams passed over before this one)."""

    def failed(self, turn: Turn, connection: SharedConnection | None,
               error: BaseException) -> R:
        """The walk ends on `error` (returns the outcome or raises)."""


def walk(config: Config, walker: Walker[T, R], skipped: Sequence[Tried] = (),
         started: float | None = None) -> R:
    """The upstreams in order until one serves or the walk ends on an error. `skipped`: the
    first upstreams, passed over already (by a change check); `started`: when the budget
    started to run (default: now)."""
    upstreams = upstream_configs(config)
    started = time.monotonic() if started is None else started
    tried = list(skipped)
    for index in range(len(tried), len(upstreams)):
        turn = Turn(budget_share(upstreams[index], index, len(upstreams), started), index,
                    len(upstreams))
        with walker.connect(turn) as connection:
            try:
                result = walker.attempt(turn, connection)
            except SyncerError as error:
                if len(upstreams) > 1 and walker.fails_over(error):
                    tried.append((turn.config, error))
                    following = Turn(upstreams[index + 1], index + 1, len(upstreams)) \
                        if index + 1 < len(upstreams) else None
                    walker.passed(turn, error, following)
                    if following is not None:
                        continue
                    error = walker.exhausted(tried)
                return walker.failed(turn, connection, error)
            except BaseException as error:  # interrupted (SIGTERM/Ctrl-C), a bug
                return walker.failed(turn, connection, error)
            return walker.served(turn, connection, result, tried)
    raise AssertionError("check_settings lets nothing start without an upstream")
