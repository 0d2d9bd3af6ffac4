"""The retry policy of a run: a step is run again after a transient failure, with exponential
backoff and jitter (a fleet of sites does not reconnect in lockstep), within sync.retry_budget;
what each attempt moved is counted whatever became of it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from ..base.config import SyncConfig
from ..base.errors import NetworkError, SyncerError
from ..base.units import format_duration
from . import rsync

log = logging.getLogger("library-syncer")


class Step(Protocol):
    """One step of a transfer worth retrying (sync/transfer.py: the dry run, the pull)."""

    def run(self) -> rsync.Stats:
        """Run it once; a rsync.TransientError is worth another attempt."""


@dataclass
class Transfer:
    """What a transfer cost, over every attempt (known even when it fails)."""

    stats: rsync.Stats = field(default_factory=rsync.Stats)
    attempts: int = 1  # 1 + retries, over the dry run and the pull
    bytes_received: int = 0
    bytes_sent: int = 0
    needed: int | None = None  # bytes the changed files need in staging (from the dry run)

    def count(self, stats: rsync.Stats) -> None:
        self.bytes_received += stats.bytes_received
        self.bytes_sent += stats.bytes_sent


def with_retries(step: Step, sync: SyncConfig, transfer: Transfer, retry: bool) -> rsync.Stats:
    """Run `step` until it succeeds, retrying transient failures within sync.retry_budget."""
    started = time.monotonic()
    delay = sync.retry_initial_delay
    while True:
        try:
            stats = step.run()
        except rsync.TransientError as error:
            transfer.count(getattr(error, "stats", rsync.Stats()))
            elapsed = time.monotonic() - started
            wait = min(delay * random.uniform(0.8, 1.2), sync.retry_max_delay)
            if not retry or elapsed + wait > sync.retry_budget:
                tried = (f"after {transfer.attempts} attempts in {format_duration(elapsed)}"
                         if transfer.attempts > 1 else "(not retried)")
                if error.lasting is not NetworkError:
                    raise error.lasting(f"{error.message} {tried}", hint=error.hint) from None
                raise NetworkError(f"{error.message} {tried}",
                                   hint="check the link and the server; the next run resumes "
                                        "where this one stopped") from None
            log.warning("attempt %d failed: %s; retrying in %.0f s", transfer.attempts,
                        error.message, wait)
            time.sleep(wait)
            delay = min(delay * 2, sync.retry_max_delay)
            transfer.attempts += 1
            continue
        except SyncerError as error:  # not worth retrying; what it moved is still counted
            transfer.count(getattr(error, "stats", rsync.Stats()))
            raise
        transfer.count(stats)
        return stats
