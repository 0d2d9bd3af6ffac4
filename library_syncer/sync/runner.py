"""The one place rsync is started (`run`; sync/streams.py runs several at once, each in its own
thread). The argv comes from sync/rsync.py; what its output and exit status mean is
the caller's (rsync.Stats, rsync.classify).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..base import execute

# rsync reads these from the environment: they would change how our argv is sent (a protected
# argv is refused by rrsync) or replace our -e ssh command line.
IGNORED_ENV = ("RSYNC_PROTECT_ARGS", "RSYNC_RSH")


@dataclass(frozen=True)
class Job:
    """One rsync process: its argv and how its output is taken."""

    argv: Sequence[str]
    on_line: Callable[[str], None] | None = None  # each output line, as it comes
    capture: bool = False  # stdout whole in the result (a listing); stderr still streamed
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # set on top of ours


def run(job: Job) -> execute.CommandResult:
    """Start rsync and wait for it; a failure is in the result's exit status, never raised."""
    env = {k: v for k, v in os.environ.items() if k not in IGNORED_ENV}
    env.update(job.env)
    return execute.run(job.argv, on_line=job.on_line, capture=job.capture, check=False,
                       timeout=job.timeout, env=env)
